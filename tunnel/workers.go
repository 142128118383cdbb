package tunnel

import (
	"sync"
	"sync/atomic"
)

// workers runs a Server's or an Agent's short jobs — a frontend connection,
// a tunnel's direction, an agent's dial — on goroutines it keeps. A
// goroutine that finishes a job waits for the next one instead of exiting,
// if fewer than maxIdleWorkers already wait. Each of those jobs calls into
// crypto/tls or net.Dial at once, and a fresh goroutine grows its stack
// there, by copying it twice; a kept one has the stack already (dial test:
// about 5 % of a tunnel's CPU on each side, docs/benchmarks.md). The jobs'
// owners wait for the jobs as before; stop ends the waiting goroutines. A
// nil *workers runs each job on a new goroutine.
type workers struct {
	jobs chan func()
	quit chan struct{}
	stop func() // closes quit, once
	idle atomic.Int32
	made atomic.Int64 // goroutines started
	wg   sync.WaitGroup
}

// maxIdleWorkers bounds the goroutines that wait for a job.
const maxIdleWorkers = 16

func newWorkers() *workers {
	quit := make(chan struct{})
	return &workers{jobs: make(chan func()), quit: quit, stop: sync.OnceFunc(func() { close(quit) })}
}

// spawn runs f on a waiting goroutine, or on a new one if none waits.
func (w *workers) spawn(f func()) {
	if w == nil {
		go f()
		return
	}
	select {
	case w.jobs <- f:
	default:
		w.made.Add(1)
		w.wg.Add(1)
		go w.work(f)
	}
}

func (w *workers) work(f func()) {
	defer w.wg.Done()
	for {
		f()
		if w.idle.Add(1) > maxIdleWorkers {
			w.idle.Add(-1)
			return
		}
		select {
		case f = <-w.jobs:
			w.idle.Add(-1)
		case <-w.quit:
			return
		}
	}
}

// close ends the waiting goroutines and waits for every one to exit, once
// the jobs have ended; call it after their owners have waited for them. A
// job spawned later runs on a goroutine that exits after it.
func (w *workers) close() {
	w.stop()
	w.wg.Wait()
}
