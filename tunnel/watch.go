package tunnel

import "time"

// Both ends watch a dial in progress for the other side giving up — the
// server for its client hanging up, the agent for the server resetting the
// stream — so that a dial nobody waits for stops at once. Nearly every dial
// ends in well under a millisecond, though, and a watch costs a goroutine
// and its wake-ups: a sixth of the work of a short tunnel. So a watch starts
// only once the dial has run for watchAfter; a dial abandoned sooner runs
// on at most that long.
const watchAfter = 10 * time.Millisecond

// lateWatch runs watch on a goroutine of its own once watchAfter has
// passed. The returned stop, called when the dial has ended, does nothing
// if the watch never started; otherwise it calls end, which must make
// watch return, and waits for it.
func lateWatch(watch, end func()) (stop func()) {
	done := make(chan struct{})
	t := time.AfterFunc(watchAfter, func() {
		defer close(done)
		watch()
	})
	return func() {
		if !t.Stop() {
			end()
			<-done
		}
	}
}
