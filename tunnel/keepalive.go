package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Keepalive defaults, the same on both ends.
const (
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultKeepaliveTimeout  = 10 * time.Second
)

// startKeepalive pings the peer of sess every interval until the session
// ends. A ping left unanswered for timeout means the peer is gone — a
// crashed host or a network that silently drops packets leaves the socket
// open, so nothing else would notice — and keepalive closes the session,
// which fails every stream on it at once. A dead peer is therefore noticed
// at most interval + timeout after its last sign of life. Each round-trip
// time is observed in rtt.
//
// Both ends run it, so each notices on its own: the server removes the
// agent's routes, the agent reconnects.
//
// It runs on a timer, not a goroutine of its own: a goroutine exists only
// while a ping is out, which spares a server a goroutine stack per idle
// agent. The caller calls stop once the session has ended; stop waits for
// a ping in flight, so nothing of the keepalive outlives it.
func startKeepalive(sess Session, interval, timeout time.Duration, rtt prometheus.Observer, log *slog.Logger) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		pinging sync.WaitGroup
		t       *time.Timer
	)
	mu.Lock() // t is set before the timer's first fire reads it
	defer mu.Unlock()
	t = time.AfterFunc(interval, func() {
		mu.Lock()
		if stopped {
			mu.Unlock()
			return
		}
		pinging.Add(1)
		mu.Unlock()
		defer pinging.Done()
		if closed(sess) {
			return
		}
		d, err := ping(sess, timeout) // a ping that fails closes the session
		if err != nil {
			log.Warn("keepalive failed; closing session", "err", err.Error(), "timeout", timeout)
			sess.Close()
			return
		}
		rtt.Observe(d.Seconds())
		mu.Lock()
		if !stopped {
			t.Reset(interval)
		}
		mu.Unlock()
	})
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
		pinging.Wait()
	}
}

func closed(sess Session) bool {
	select {
	case <-sess.Done():
		return true
	default:
		return false
	}
}

// pingWithin runs send, a blocking ping, and waits for its answer until ctx
// ends. If the ping fails or ctx ends first it calls abort, which must make
// send return (it closes the connection), and it waits for send, so that
// no goroutine outlives the call.
func pingWithin(ctx context.Context, send func() (time.Duration, error), abort func()) (time.Duration, error) {
	type answer struct {
		rtt time.Duration
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		rtt, err := send()
		ch <- answer{rtt, err}
	}()
	select {
	case a := <-ch:
		if a.err != nil {
			abort()
		}
		return a.rtt, a.err
	case <-ctx.Done():
		abort()
		<-ch
		return 0, context.Cause(ctx)
	}
}

// ping sends one ping and waits at most timeout for its answer.
func ping(sess Session, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), timeout,
		fmt.Errorf("no answer to a keepalive ping within %s", timeout))
	defer cancel()
	return sess.Ping(ctx)
}
