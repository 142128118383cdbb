package konnectivity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/tunnel"
)

// The harness runs a real tunnel.Server with this frontend on a unix
// socket, a real agent for node-a (127.0.0.1) over loopback TLS 1.3, and
// real targets, through package tunnel's exported API only. Readiness is
// waited for on channels and the server's own counters.

type harness struct {
	t         *testing.T
	files     certs.Files
	pool      *x509.CertPool
	srv       *tunnel.Server
	agentAddr string
	grpcPath  string // this frontend's unix socket
}

// newHarness starts a server, its agent listener and the gRPC frontend;
// mod adjusts the server's config before it starts.
func newHarness(t *testing.T, mod func(*tunnel.ServerConfig)) *harness {
	t.Helper()
	checkLeaks(t)
	dir := t.TempDir()
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(dir, "pki"),
		Nodes: []certs.Node{{Name: "node-a", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}}})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, files: files, grpcPath: filepath.Join(dir, "g.sock")}
	if h.pool, err = certs.LoadPool(files.CACert); err != nil {
		t.Fatal(err)
	}
	cfg := tunnel.DefaultServerConfig()
	cfg.AgentTLS = &tls.Config{Certificates: []tls.Certificate{h.keyPair(files.ServerCert, files.ServerKey)}, ClientCAs: h.pool}
	cfg.Logger = testLogger(t)
	if mod != nil {
		mod(&cfg)
	}
	if h.srv, err = tunnel.NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	agentLn := listenTCP(t, "127.0.0.1:0")
	h.agentAddr = agentLn.Addr().String()
	grpcLn, err := tunnel.ListenUnix(h.grpcPath, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	h.goServe(func() error { return h.srv.ServeAgents(agentLn) })
	h.goServe(func() error { return Serve(h.srv, grpcLn) })
	return h
}

// goServe runs serve until the server closes, and fails the test if it
// returns an error.
func (h *harness) goServe(serve func() error) {
	done := make(chan error, 1)
	go func() { done <- serve() }()
	h.t.Cleanup(func() {
		h.srv.Close() // closes the listener serve runs on
		if err := <-done; err != nil {
			h.t.Errorf("serve: %v", err)
		}
	})
}

func (h *harness) keyPair(cert, key string) tls.Certificate {
	c, err := certs.LoadKeyPair(cert, key)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// agentConfig returns the config of node-a's agent.
func (h *harness) agentConfig() tunnel.AgentConfig {
	f := h.files.Agents["node-a"]
	cfg := tunnel.DefaultAgentConfig()
	cfg.ServerAddress = h.agentAddr
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{h.keyPair(f[0], f[1])}, RootCAs: h.pool, ServerName: "localhost"}
	cfg.NodeName = "node-a"
	cfg.NodeIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	cfg.DrainTimeout = time.Millisecond
	cfg.Logger = testLogger(h.t).With("agent", "node-a")
	return cfg
}

// startAgent runs an agent of cfg until the test ends and waits until the
// server has registered it.
func (h *harness) startAgent(cfg tunnel.AgentConfig) {
	h.t.Helper()
	a, err := tunnel.NewAgent(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	h.t.Cleanup(func() { cancel(); <-done })
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := h.srv.WaitAgents(wctx, 1); err != nil {
		h.t.Fatal(err)
	}
}

func listenTCP(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// startEcho serves an echo target on loopback and returns its address. It
// echoes until the client half-closes, then half-closes back.
func startEcho(t *testing.T) string {
	ln := listenTCP(t, "127.0.0.1:0")
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	return ln.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// expectMetric polls until the counter name{label=value} in g satisfies
// want, for values the copy path updates just after the client sees their
// effect.
func expectMetric(t *testing.T, g prometheus.Gatherer, want cond, name, label, value string) {
	t.Helper()
	var v float64
	var found bool
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if v, found = counterValue(t, g, name, label, value); found && want.ok(v) {
			return
		}
	}
	t.Errorf("%s{%s=%q} = %v (exists: %v), want %s", name, label, value, v, found, want.desc)
}

func counterValue(t *testing.T, g prometheus.Gatherer, name, label, value string) (float64, bool) {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabel(m, label, value) {
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// cond is what a metric's value must satisfy.
type cond struct {
	desc string
	ok   func(float64) bool
}

func eq(n float64) cond { return cond{fmt.Sprintf("== %v", n), func(v float64) bool { return v == n }} }
func ge(n float64) cond { return cond{fmt.Sprintf(">= %v", n), func(v float64) bool { return v >= n }} }

// testLogger writes the server's and the agent's logs to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// TestMain fails the package's tests if any goroutine outlives them:
// Server.Close waits for everything Serve started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// checkLeaks fails t if goroutines started during the test are still
// running once its cleanups are done. Call it first, so that its cleanup
// runs last.
func checkLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if err := goleak.Find(ignore); err != nil {
			t.Errorf("goroutines left running after the test: %v", err)
		}
	})
}
