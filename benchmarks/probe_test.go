package benchmarks

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunnel-project/tunnel/certs"
)

// probeHarness is a target, a ProbeAgent on loopback TLS and a ProbeServer
// on a unix socket, in this process.
type probeHarness struct {
	target, dead string // the target's address; an address nobody listens on
	tunnel       ConnectDialer
	server       *ProbeServer
	agent        *ProbeAgent
}

func startProbe(t testing.TB) *probeHarness {
	t.Helper()
	dir := t.TempDir()
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(dir, "pki"), Nodes: []certs.Node{benchNode}})
	if err != nil {
		t.Fatal(err)
	}
	h := &probeHarness{}
	h.target = serveIn(t, NewTarget(listen(t, "tcp", "127.0.0.1:0")))
	dead := listen(t, "tcp", "127.0.0.1:0")
	h.dead = dead.Addr().String()
	dead.Close()

	agentTLS, err := ProbeAgentTLS(files.CACert, files.ServerCert, files.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	h.agent = NewProbeAgent(tls.NewListener(listen(t, "tcp", "127.0.0.1:0"), agentTLS))
	agentAddr := serveIn(t, h.agent)

	pair := files.Agents[benchNode.Name]
	serverTLS, err := ProbeServerTLS(files.CACert, pair[0], pair[1], "localhost")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "probe.sock")
	h.server = NewProbeServer(listen(t, "unix", sock), agentAddr, serverTLS)
	serveIn(t, h.server)
	h.tunnel = ConnectDialer{Network: "unix", Addr: sock, Dest: h.target}
	return h
}

// checkLeaks fails t if goroutines started during it outlive its
// cleanups. Call it first: cleanups run last-registered first.
func checkLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// server is what serveIn runs: a Target or a probe relay.
type server interface {
	Serve() error
	Close() error
	Addr() net.Addr
}

// serveIn serves s until the test ends, then closes it and waits for Serve.
func serveIn(t testing.TB, s server) string {
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s.Addr().String()
}

// TestProbe moves verified bytes both ways and echoes through the probe,
// and reports a destination nobody listens on as a 502.
func TestProbe(t *testing.T) {
	checkLeaks(t)
	h := startProbe(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c, err := Open(ctx, h.tunnel, Header{Mode: ModeEcho}, nil)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("sixty-four bytes or so, through a TLS relay and back again, ok?")
	if err := Echo(c, msg, make([]byte, len(msg)), IOGrace); err != nil {
		t.Fatal(err)
	}
	c.Close()

	const n = 3<<20 + 17 // not a multiple of any buffer
	up, err := Open(ctx, h.tunnel, Header{Mode: ModeSink, Seed: 7}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if _, err := UploadN(up, NewPattern(7), ChunkSize, n); err != nil {
		t.Errorf("upload: %v", err)
	}
	down, err := Open(ctx, h.tunnel, Header{Mode: ModeSource, Seed: 8, Length: n}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	if err := DownloadN(down, NewPattern(8), make([]byte, 50_000), n); err != nil {
		t.Errorf("download: %v", err)
	}

	bad := h.tunnel
	bad.Dest = h.dead
	_, err = bad.Dial(ctx)
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Status != 502 {
		t.Errorf("CONNECT to %s (nobody listens): %v, want a 502", h.dead, err)
	}
}

// TestProbeCloseEndsTunnels: Close returns while tunnels are open, and
// the client sees its tunnel end.
func TestProbeCloseEndsTunnels(t *testing.T) {
	checkLeaks(t)
	h := startProbe(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Open(ctx, h.tunnel, Header{Mode: ModeEcho}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	closed := make(chan struct{})
	go func() {
		h.server.Close()
		h.agent.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with a tunnel open")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the tunnel still reads after Close")
	}
}

// BenchmarkProbeDial is BenchmarkDial through the probe: a fresh TLS 1.3
// handshake per tunnel.
func BenchmarkProbeDial(b *testing.B) {
	h := startProbe(b)
	msg, buf := make([]byte, 64), make([]byte, 64)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		msg[0] = byte(i)
		if err := dialEcho(h.tunnel, msg, buf); err != nil {
			b.Fatal(err)
		}
	}
}
