package tunnel

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
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

// TestAgentDrain: an agent whose context ends tells the server and lets its
// open tunnels finish. While it is the only agent for its node, new dials
// still reach it rather than fail in the moment before its replacement
// registers; once the replacement has, they go there; the old agent stops
// once its own tunnels end.
func TestAgentDrain(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.DrainTimeout = time.Minute
	cfg.DrainIdle = time.Minute // the open tunnels are not idle ones here
	old := h.startAgent(cfg)
	echo := startEcho(t, "127.0.0.1:0")
	before := h.mustConnect(echo)

	stopped := make(chan struct{})
	go func() { old.stop(); close(stopped) }()
	waitFor(t, "the server to see the agent draining", func() bool {
		all := h.srv.routes.all()
		return len(all) == 1 && all[0].draining.Load()
	})
	during := h.mustConnect(echo) // the draining agent is the only one
	for _, c := range []net.Conn{before, during} {
		if err := echoCheck(c, 1<<20); err != nil {
			t.Fatalf("tunnel through the draining agent: %v", err)
		}
	}

	h.runAgent(h.agentConfig("node-a"))
	waitFor(t, "the replacement to take the node's routes", func() bool {
		all := h.srv.routes.all()
		return len(all) == 1 && !all[0].draining.Load()
	})
	after := h.mustConnect(echo)
	select {
	case <-stopped:
		t.Fatal("agent stopped with tunnels still open")
	default:
	}
	before.Close()
	during.Close()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("agent did not stop after its last tunnel closed")
	}
	if err := echoCheck(after, 1<<20); err != nil {
		t.Fatalf("tunnel dialed after the replacement registered, once the old agent stopped: %v", err)
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
// DrainIdle is closed in a pause after an answer, not cut mid-request at
// the timeout, and every request sent gets its answer: one carrying
// request after request (fifty a second, a busy webhook connection) soon
// after the drain begins, one with a few a second in the last quarter of
// DrainTimeout.
func TestAgentDrainClosesBusyTunnelBetweenRequests(t *testing.T) {
	for _, tc := range []struct {
		name           string
		pause          time.Duration // between an answer and the next request
		drain          time.Duration // DrainTimeout
		within, before time.Duration // when the tunnel must close
	}{
		{"busy", 20 * time.Millisecond, time.Minute, 0, 2 * time.Second},
		{"slow", 200 * time.Millisecond, 2 * time.Second, time.Second, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			cfg := h.agentConfig("node-a")
			cfg.DrainTimeout = tc.drain
			cfg.DrainIdle = time.Minute
			agent := h.startAgent(cfg)
			c := h.mustConnect(startEcho(t, "127.0.0.1:0"))
			if n := requestLoop(t, c, tc.pause, time.Now().Add(2500*time.Millisecond)); n >= 0 {
				t.Fatalf("closed after %d requests, before the drain", n)
			}
			start := time.Now()
			go agent.stop()
			n := requestLoop(t, c, tc.pause, start.Add(tc.drain+5*time.Second))
			took := time.Since(start)
			t.Logf("closed between requests %s into the drain, after %d requests", took.Round(time.Millisecond), n)
			if n < 0 || took < tc.within || took > tc.before {
				t.Fatalf("closed after %s (open: %v); want between %s and %s into the drain", took, n < 0, tc.within, tc.before)
			}
		})
	}
}

// requestLoop sends requests on c until until, each after a pause in which
// it reads as an HTTP client's idle connection does, where an EOF is the
// server closing an idle connection: then it returns how many requests it
// sent. It returns -1 if c is still open at until; it fails the test if a
// request loses its answer.
func requestLoop(t *testing.T, c net.Conn, pause time.Duration, until time.Time) int {
	t.Helper()
	req, resp := []byte("request"), make([]byte, 7)
	for n := 0; time.Now().Before(until); n++ {
		c.SetReadDeadline(time.Now().Add(pause))
		if _, err := c.Read(resp[:1]); err == io.EOF {
			return n
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("between requests: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(req); err != nil {
			t.Fatalf("request %d: %v", n, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			t.Fatalf("request %d lost its answer: %v", n, err)
		}
	}
	return -1
}

// TestAgentDrainKeepsStreamingTunnel: a tunnel that opened with a burst of
// exchanges (a session's handshakes) and then carries output the node sends
// unprompted, as an exec or logs -f does, is not taken for a busy
// keep-alive: the drain lets it run to its end.
func TestAgentDrainKeepsStreamingTunnel(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.DrainTimeout = time.Minute
	cfg.DrainIdle = time.Minute
	agent := h.startAgent(cfg)
	const opening, ticks = 8, 40
	ln := listenTCP(t, "127.0.0.1:0")
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		for range opening {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			c.Write(b)
		}
		for range ticks {
			time.Sleep(50 * time.Millisecond)
			if _, err := c.Write([]byte("t")); err != nil {
				return
			}
		}
	}()
	c := h.mustConnect(ln.Addr().String())
	c.SetDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 1)
	for range opening {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
	}
	go agent.stop()
	got, err := io.ReadAll(c)
	if err != nil || len(got) != ticks {
		t.Fatalf("streamed through the drain: %d of %d bytes, %v", len(got), ticks, err)
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

// TestAgentDrainTimeoutEndsHalfClosedTunnels: a tunnel whose client has
// finished sending, and whose node keeps its side open and silent, is
// closed when the drain timeout passes, and the agent stops. Closing the
// session alone left the node side waiting for ever, and Run with it.
func TestAgentDrainTimeoutEndsHalfClosedTunnels(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.DrainTimeout = 300 * time.Millisecond
	cfg.DrainIdle = 200 * time.Millisecond
	agent := h.startAgent(cfg)
	silent := listenTCP(t, "127.0.0.1:0")
	held := make(chan net.Conn, 1)
	go func() {
		if c, err := silent.Accept(); err == nil {
			held <- c
		}
	}()
	c := h.mustConnect(silent.Addr().String())
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	node := <-held
	defer node.Close()
	if _, err := io.ReadFull(node, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	node.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := node.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("node side after the client's FIN: read %d, %v; want EOF", n, err)
	}
	stopped := make(chan struct{})
	go func() { agent.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop at its drain timeout while a half-closed tunnel was open")
	}
}
