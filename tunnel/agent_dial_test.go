package tunnel

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestAgentStopsDialWhenServerGivesUp: a caller that goes away while the
// agent is still dialing (a gRPC DIAL_CLS, a canceled request) ends the
// agent's dial too, long before the dial timeout.
func TestAgentStopsDialWhenServerGivesUp(t *testing.T) {
	h := newHarness(t, func(c *ServerConfig) { c.DialTimeout = 30 * time.Second })
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	cfg := h.agentConfig("node-a")
	cfg.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
		started <- struct{}{}
		<-ctx.Done() // a destination that never answers
		ended <- context.Cause(ctx)
		return nil, ctx.Err()
	}
	h.startAgent(cfg)

	ctx, cancel := context.WithCancel(context.Background())
	dialed := make(chan error, 1)
	go func() {
		_, err := h.srv.Dial(ctx, "127.0.0.1:9")
		dialed <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent never started dialing")
	}
	cancel()
	if err := <-dialed; resultOf(err) == ResultOK {
		t.Fatal("canceled dial succeeded")
	}
	select {
	case cause := <-ended:
		if cause != errServerGaveUp {
			t.Fatalf("agent's dial ended by %v, want %v", cause, errServerGaveUp)
		}
	case <-time.After(10 * time.Second): // well before the 30s dial timeout
		t.Fatal("the agent's dial went on after the server gave up")
	}
}
