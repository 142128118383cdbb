package tunnel

import (
	"sync"
	"testing"
	"time"
)

// TestWorkersReuse: a job spawned after another has ended runs on the
// goroutine that ran it; a burst gets a goroutine per job, of which at
// most maxIdleWorkers stay to wait; a waiting goroutine exits once its
// idle timeout passes; close waits for every one to exit.
func TestWorkersReuse(t *testing.T) {
	checkLeaks(t)
	w := newWorkers()
	w.ttl = time.Hour
	defer w.close()
	for range 10 {
		ran := make(chan struct{})
		w.spawn(func() { close(ran) })
		<-ran
		waitFor(t, "the worker to wait for the next job", func() bool { return w.idle.Load() >= 1 })
	}
	// A spawn in the moment between a worker counting itself idle and its
	// receive starts a goroutine: rare, so a few are let pass.
	if n := w.made.Load(); n > 3 {
		t.Fatalf("10 jobs one after another started %d goroutines, want 1", n)
	}

	const burst = 3 * maxIdleWorkers
	var started sync.WaitGroup
	release := make(chan struct{})
	started.Add(burst)
	made, waiting := w.made.Load(), int64(w.idle.Load())
	for range burst {
		w.spawn(func() { started.Done(); <-release })
	}
	started.Wait() // all running at once: the waiting ones reused, the rest new
	if n := w.made.Load() - made; n < burst-waiting || n > burst {
		t.Fatalf("a burst of %d jobs with %d goroutines waiting started %d more, want %d", burst, waiting, n, burst-waiting)
	}
	close(release)
	waitFor(t, "the burst's goroutines to end or wait", func() bool { return w.idle.Load() == maxIdleWorkers })

	short := newWorkers()
	short.ttl = 10 * time.Millisecond
	defer short.close()
	ran := make(chan struct{})
	short.spawn(func() { close(ran) })
	<-ran
	exited := make(chan struct{})
	go func() { short.wg.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting goroutine did not exit after its idle timeout")
	}
}
