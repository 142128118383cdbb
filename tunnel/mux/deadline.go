package mux

import (
	"sync"
	"time"
)

// deadline is one direction's deadline of a stream. Blocked calls select on
// wait(), which is closed when the deadline passes; moving the deadline
// keeps the same channel while it is open, so calls already blocked see the
// change. The channel and the timer are made only once a call blocks: a
// deadline set around calls that never wait (the agent's read of a dial
// request that came with the SYN) costs no timer, and a stream whose calls
// never block, and that never sets a deadline, pays nothing.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer   // made for the first blocked call with a deadline, then reset
	at    time.Time     // the deadline; zero for none
	ch    chan struct{} // nil until a call blocks
}

// set moves the deadline to t; the zero time removes it. It allocates
// nothing after the first time: the copy path moves a stream's read
// deadline around its large reads (tunnel/copy.go, largeRead).
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = t
	if d.ch != nil && closed(d.ch) {
		d.ch = nil // the old deadline passed; start afresh
	}
	if d.ch != nil {
		d.armLocked()
	} else if d.timer != nil {
		d.timer.Stop()
	}
}

// armLocked makes the open channel close when the deadline passes.
func (d *deadline) armLocked() {
	if d.timer != nil {
		d.timer.Stop()
	}
	if d.at.IsZero() {
		return
	}
	wait := time.Until(d.at)
	switch {
	case wait <= 0:
		close(d.ch)
	case d.timer == nil:
		d.timer = time.AfterFunc(wait, d.expire)
	default:
		d.timer.Reset(wait)
	}
}

// expire closes the channel if the deadline has passed: a timer that fires
// for a deadline moved since does nothing.
func (d *deadline) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.at.IsZero() && !time.Now().Before(d.at) && d.ch != nil && !closed(d.ch) {
		close(d.ch)
	}
}

// wait returns a channel closed once the deadline has passed.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
		d.armLocked()
	}
	return d.ch
}

// passed reports whether the deadline has passed.
func (d *deadline) passed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.at.IsZero() && !time.Now().Before(d.at)
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
