package tunnel

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServerShutdownDrains: once Shutdown begins, new CONNECTs get 503 with
// the reason while an open tunnel keeps working; Shutdown returns when that
// tunnel ends.
func TestServerShutdownDrains(t *testing.T) {
	h := newHarness(t, nil)
	h.startAgent(h.agentConfig("node-a"))
	echo := startEcho(t, "127.0.0.1:0")
	c := h.mustConnect(echo)

	done := make(chan error, 1)
	go func() { done <- h.srv.Shutdown(context.Background()) }()
	waitFor(t, "the server to drain", h.srv.Draining)

	_, res := h.connect(echo)
	if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(res.Status, "draining") {
		t.Fatalf("CONNECT while draining: %s, want 503 server draining", res.Status)
	}
	if err := echoCheck(c, 1<<20); err != nil {
		t.Fatalf("tunnel open before the drain: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a tunnel still open", err)
	default:
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last tunnel closed")
	}
}

// TestServerShutdownTimeout: a tunnel that outlives the drain deadline is
// closed, and Shutdown says the deadline passed.
func TestServerShutdownTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.startAgent(h.agentConfig("node-a"))
	c := h.mustConnect(startEcho(t, "127.0.0.1:0"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := h.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a tunnel open past the deadline: %v", err)
	}
	if err := waitClosed(c, 3*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestAgentDrain: an agent whose context ends tells the server, which routes
// nothing new to it at once, while its open tunnel finishes; the agent stops
// once that tunnel ends.
func TestAgentDrain(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.DrainTimeout = time.Minute
	agent := h.startAgent(cfg)
	echo := startEcho(t, "127.0.0.1:0")
	c := h.mustConnect(echo)

	stopped := make(chan struct{})
	go func() { agent.stop(); close(stopped) }()
	waitFor(t, "the server to take the draining agent out of routing", func() bool { return h.srv.Agents() == 0 })

	_, res := h.connect(echo)
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(res.Status, "no agent") {
		t.Fatalf("CONNECT to a draining agent's node: %s, want 502 no agent", res.Status)
	}
	if err := echoCheck(c, 1<<20); err != nil {
		t.Fatalf("tunnel open before the drain: %v", err)
	}
	select {
	case <-stopped:
		t.Fatal("agent stopped with a tunnel still open")
	default:
	}
	c.Close()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("agent did not stop after its last tunnel closed")
	}
}

// waitFor polls cond until it holds, for at most 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
