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
	h, started, ended := blackholeAgent(t)
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
	expectDialEnded(t, ended)
}

// TestHangUpStopsDial: a CONNECT client that hangs up while its dial is in
// progress (kube-apiserver giving up on a webhook after its timeout) ends
// the dial on the server and the agent, long before the dial timeout.
func TestHangUpStopsDial(t *testing.T) {
	h, started, ended := blackholeAgent(t)
	c, err := net.Dial("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent never started dialing")
	}
	c.Close()
	expectDialEnded(t, ended)
	waitFor(t, "the server to count no tunnel", func() bool { return h.srv.Tunnels() == 0 })
}

// blackholeAgent starts a server with a 30s dial timeout and an agent
// whose destinations never answer: started receives when a dial begins,
// ended why it ended.
func blackholeAgent(t *testing.T) (h *harness, started chan struct{}, ended chan error) {
	h = newHarness(t, func(c *ServerConfig) { c.DialTimeout = 30 * time.Second })
	started, ended = make(chan struct{}, 1), make(chan error, 1)
	cfg := h.agentConfig("node-a")
	cfg.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
		started <- struct{}{}
		<-ctx.Done() // a destination that never answers
		ended <- context.Cause(ctx)
		return nil, ctx.Err()
	}
	h.startAgent(cfg)
	return h, started, ended
}

// expectDialEnded expects the agent's dial to end because the server gave
// up on it, well before its 30s timeout.
func expectDialEnded(t *testing.T, ended <-chan error) {
	t.Helper()
	select {
	case cause := <-ended:
		if cause != errServerGaveUp {
			t.Fatalf("agent's dial ended by %v, want %v", cause, errServerGaveUp)
		}
	case <-time.After(10 * time.Second): // well before the 30s dial timeout
		t.Fatal("the agent's dial went on after the server gave up")
	}
}
