package tunnel

import (
	"sync"
	"sync/atomic"
	"time"
)

// workers runs a Server's or an Agent's short jobs — a frontend connection,
// a tunnel's direction, an agent's dial — on goroutines it keeps. A
// goroutine that finishes a job waits up to workerIdleTimeout for the next
// one instead of exiting, if fewer than maxIdleWorkers already wait. Each of
// those jobs calls into crypto/tls or net.Dial at once, and a fresh
// goroutine grows its stack there, by copying it twice; a kept one has the
// stack already (dial test: about a tenth of each side's CPU profile,
// benchmarks/results/README.md). The jobs' owners wait for the jobs as
// before; close ends the waiting goroutines. A nil *workers runs each job
// on a new goroutine. Only jobs that end, or that leave their wait to a
// fresh goroutine, belong here: a job that waits long keeps the stack
// earlier jobs grew.
type workers struct {
	jobs chan func()
	quit chan struct{}
	stop func() // closes quit, once
	ttl  time.Duration
	idle atomic.Int32
	made atomic.Int64 // goroutines started
	wg   sync.WaitGroup
}

const (
	maxIdleWorkers    = 16          // goroutines that wait for a job at once
	workerIdleTimeout = time.Second // how long one waits before it exits
)

func newWorkers() *workers {
	quit := make(chan struct{})
	return &workers{jobs: make(chan func()), quit: quit, stop: sync.OnceFunc(func() { close(quit) }), ttl: workerIdleTimeout}
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
	var expire *time.Timer
	for {
		f()
		if w.idle.Add(1) > maxIdleWorkers {
			w.idle.Add(-1)
			return
		}
		if expire == nil {
			expire = time.NewTimer(w.ttl)
			defer expire.Stop()
		} else {
			expire.Reset(w.ttl)
		}
		select {
		case f = <-w.jobs:
		case <-expire.C:
			f = nil
		case <-w.quit:
			f = nil
		}
		w.idle.Add(-1)
		if f == nil {
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
