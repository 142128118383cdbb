package tunnel

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
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
	cfg.DrainIdle = time.Minute // the open tunnel is not an idle one here
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

// TestAgentDrainClosesIdleTunnels: a drain closes, with a clean EOF, a
// tunnel whose node answered last and that stayed quiet for DrainIdle (a
// keep-alive between requests), and ends as soon as nothing else is open;
// a tunnel whose request is not yet answered stays open until it is.
func TestAgentDrainClosesIdleTunnels(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.DrainTimeout = time.Minute
	cfg.DrainIdle = 200 * time.Millisecond
	agent := h.startAgent(cfg)
	echo := startEcho(t, "127.0.0.1:0")
	idle := h.mustConnect(echo)
	if err := echoCheck(idle, 1<<10); err != nil {
		t.Fatal(err)
	}
	// A target that reads a request and answers only when told to.
	slowLn := listenTCP(t, "127.0.0.1:0")
	answer := make(chan struct{})
	go func() {
		c, err := slowLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.ReadFull(c, make([]byte, 5))
		<-answer
		c.Write([]byte("reply"))
		io.Copy(io.Discard, c)
	}()
	waiting := h.mustConnect(slowLn.Addr().String())
	if _, err := waiting.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	stopped := make(chan struct{})
	go func() { agent.stop(); close(stopped) }()
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle tunnel during the drain: read %d bytes, %v; want a clean EOF", n, err)
	}
	t.Logf("idle tunnel closed %s into the drain", time.Since(start).Round(time.Millisecond))
	idle.Close() // as an HTTP client drops a connection the server closed
	select {
	case <-stopped:
		t.Fatal("agent stopped while a request waited for its answer")
	case <-time.After(3 * cfg.DrainIdle):
	}
	close(answer)
	got := make([]byte, 5)
	waiting.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(waiting, got); err != nil || string(got) != "reply" {
		t.Fatalf("answer to the request sent before the drain: %q, %v", got, err)
	}
	if err := waitClosed(waiting, 10*time.Second); err != nil {
		t.Fatalf("answered tunnel during the drain: %v", err)
	}
	waiting.Close()
	select { // now it is an idle tunnel too
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop once only idle tunnels were left")
	}
}

// TestAgentDrainClosesBusyTunnelBetweenRequests: a tunnel never quiet for
// DrainIdle (requests one after another) is closed in the last quarter of
// DrainTimeout in a pause after an answer, not cut mid-request at the
// timeout: every request sent gets its answer.
func TestAgentDrainClosesBusyTunnelBetweenRequests(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.DrainTimeout = 2 * time.Second
	cfg.DrainIdle = time.Minute
	agent := h.startAgent(cfg)
	c := h.mustConnect(startEcho(t, "127.0.0.1:0"))

	start := time.Now()
	go agent.stop()
	req, resp := []byte("request"), make([]byte, 7)
	for n := 0; ; n++ {
		// Between requests, read as an HTTP client's idle connection does:
		// an EOF here is the server closing an idle connection.
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(resp[:1]); err == io.EOF {
			t.Logf("closed between requests %s into the drain, after %d requests", time.Since(start).Round(time.Millisecond), n)
			if d := time.Since(start); d < cfg.DrainTimeout/2 {
				t.Fatalf("closed after %s, before the last quarter of the %s drain", d, cfg.DrainTimeout)
			}
			return
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("between requests: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(req); err != nil {
			t.Fatalf("request %d: %v", n, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			t.Fatalf("request %d, %s into the drain, lost its answer: %v", n, time.Since(start).Round(time.Millisecond), err)
		}
	}
}

// blockOn is a log handler that holds the record with message msg until
// release is closed, after signalling blocked: a goroutine caught at a
// known point.
type blockOn struct {
	slog.Handler
	msg     string
	blocked chan struct{}
	release chan struct{}
}

func (b *blockOn) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == b.msg {
		b.blocked <- struct{}{}
		<-b.release
	}
	return b.Handler.Handle(ctx, r)
}

func (b *blockOn) WithAttrs(as []slog.Attr) slog.Handler {
	return &blockOn{Handler: b.Handler.WithAttrs(as), msg: b.msg, blocked: b.blocked, release: b.release}
}

func (b *blockOn) WithGroup(name string) slog.Handler {
	return &blockOn{Handler: b.Handler.WithGroup(name), msg: b.msg, blocked: b.blocked, release: b.release}
}

// TestAgentRunWaitsForDrain: Run does not return while the drain that its
// context's end started is still running, even when the session ends
// under it (here the server closes).
func TestAgentRunWaitsForDrain(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.DrainTimeout = time.Minute
	hold := &blockOn{Handler: cfg.Logger.Handler(), msg: "draining", blocked: make(chan struct{}, 1), release: make(chan struct{})}
	cfg.Logger = slog.New(hold)
	release := sync.OnceFunc(func() { close(hold.release) })
	t.Cleanup(release)
	agent := h.startAgent(cfg)

	stopped := make(chan struct{})
	go func() { agent.stop(); close(stopped) }()
	<-hold.blocked // the drain has begun, and waits
	h.srv.Close()  // the session ends under it
	select {
	case <-stopped:
		t.Fatal("Run returned while its drain was still running")
	case <-time.After(time.Second):
	}
	release()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return once its drain ended")
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
