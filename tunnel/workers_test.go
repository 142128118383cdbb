package tunnel

import (
	"sync"
	"testing"
)

// TestWorkersReuse: a job spawned after another has ended runs on the
// goroutine that ran it; a burst gets a goroutine per job, of which at
// most maxIdleWorkers stay to wait; close ends them all (checkLeaks).
func TestWorkersReuse(t *testing.T) {
	checkLeaks(t)
	w := newWorkers()
	defer w.close()
	for range 10 {
		ran := make(chan struct{})
		w.spawn(func() { close(ran) })
		<-ran
		waitFor(t, "the worker to wait for the next job", func() bool { return w.idle.Load() == 1 })
	}
	if n := w.made.Load(); n != 1 {
		t.Fatalf("10 jobs one after another started %d goroutines, want 1", n)
	}

	const burst = 3 * maxIdleWorkers
	var started sync.WaitGroup
	release := make(chan struct{})
	started.Add(burst)
	for range burst {
		w.spawn(func() { started.Done(); <-release })
	}
	started.Wait() // all running at once: one reused, the rest new
	if n := w.made.Load(); n != burst {
		t.Fatalf("after a burst of %d jobs, %d goroutines were started, want %d", burst, n, burst)
	}
	close(release)
	waitFor(t, "the burst's goroutines to end or wait", func() bool { return w.idle.Load() == maxIdleWorkers })
}
