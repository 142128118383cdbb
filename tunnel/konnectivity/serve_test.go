package konnectivity

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tunnel-project/tunnel/tunnel"
)

// Serve's place in the server's lifecycle (Server.ServeFrontend): its
// connections under the frontend cap, its listener closed by Close, and
// nothing of it left running once Close returns.

// TestGRPCFrontendConnectionCap: the frontend's connections count under
// MaxFrontendConns; one over the cap is refused before its HTTP/2
// handshake, and counted; the place comes back when a connection ends.
func TestGRPCFrontendConnectionCap(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *tunnel.ServerConfig) { c.Registerer = reg; c.MaxFrontendConns = 1 })
	h.startAgent(h.agentConfig())
	echo := startEcho(t)

	first := openProxy(t, h.grpcPath)
	first.mustDial(echo)
	over, err := tryProxy(t, h.grpcPath)
	if err == nil {
		_, err = over.stream.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a stream over the cap: %v, want Unavailable", err)
	}
	expectMetric(t, reg, ge(1), "tunnel_server_limit_rejections_total", "limit", tunnel.LimitFrontendConns)

	first.close()
	var next *proxyClient
	waitFor(t, "the place to come back", func() bool {
		next, err = tryProxy(t, h.grpcPath)
		return err == nil
	})
	id := next.mustDial(echo)
	next.data(id, []byte("in again"))
	if got := next.readData(id, 8); string(got) != "in again" {
		t.Errorf("got %q", got)
	}
}

// TestServeAfterClose: Serve on a closed server returns nil at once and
// closes its listener, as ServeConnect does.
func TestServeAfterClose(t *testing.T) {
	h := newHarness(t, nil)
	h.srv.Close()
	ln, err := tunnel.ListenUnix(filepath.Join(t.TempDir(), "late.sock"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(h.srv, ln) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve after Close did not return")
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("listener after Serve returned: Accept %v, want it closed", err)
	}
}

// TestCloseEndsStreams: Close returns only once every stream has ended and
// Serve has returned, with tunnels open and a dial in progress.
func TestCloseEndsStreams(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig()
	dialing := make(chan struct{}, 1)
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == "127.0.0.1:10250" { // a destination that never answers
			dialing <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	h.startAgent(cfg)
	echo := startEcho(t)

	open := openProxy(t, h.grpcPath)
	open.mustDial(echo)
	pending := openProxy(t, h.grpcPath)
	pending.dialRequest("tcp", "127.0.0.1:10250", 3)
	<-dialing

	h.srv.Close()
	for _, c := range []*proxyClient{open, pending} {
		for { // a CLOSE_RSP may come first; then the stream must end
			if _, err := c.stream.Recv(); err != nil {
				break
			}
		}
	}
	if n := h.srv.Tunnels(); n != 0 {
		t.Errorf("%d tunnels after Close", n)
	}
}
