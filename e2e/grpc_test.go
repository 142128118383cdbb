package e2e

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// TestEgressSelectorGRPC runs the conformance checks through tunnel-server's
// gRPC frontend with kube-apiserver's real client: proxyProtocol GRPC over a
// unix socket (k8s.io/apiserver's egressselector, which uses Konnectivity's
// client), loaded from deploy/egress-selector/grpc-uds.yaml.
func TestEgressSelectorGRPC(t *testing.T) {
	tg := startTargets(t)
	tn := startTunnel(t, tg.echo)
	path := writeEgressConfig(t, deployConfig(t, "grpc-uds.yaml",
		"/etc/kubernetes/tunnel/grpc.sock", tn.grpcUDSPath))
	dial := withDeadlines(loadClusterDialer(t, path))

	// Not half-close: the client's connection has no CloseWrite (its
	// protocol has no half-close). Its close, and the target's, are checked
	// by close and by the EOF after each bulk transfer.
	t.Run("echo", func(t *testing.T) { testEcho(t, dial, tg) })
	t.Run("concurrent", func(t *testing.T) { testConcurrent(t, dial, tg) })
	t.Run("http-get", func(t *testing.T) { testHTTPGet(t, dial, tg) })
	t.Run("upload-64MiB", func(t *testing.T) { testUpload(t, dial, tg) })
	t.Run("download-64MiB", func(t *testing.T) { testDownload(t, dial, tg) })
	t.Run("node-name", func(t *testing.T) { testNodeName(t, dial, tg) })
	t.Run("close", func(t *testing.T) { testGRPCClose(t, dial, tg) })
	t.Run("no-agent", func(t *testing.T) {
		for _, host := range []string{absentNodeIP, absentNodeName} {
			expectDialError(t, dial, net.JoinHostPort(host, "10250"), "code 502", "no agent for "+host)
		}
	})
	t.Run("connection-refused", func(t *testing.T) {
		expectDialError(t, dial, tg.closed, "code 502", "dial "+tg.closed+": connection refused")
	})
}

// testGRPCClose closes tunnels from the client side: Close waits for the
// server's CLOSE_RSP (up to 10 s in the client), so it must return nil, and
// fast.
func testGRPCClose(t *testing.T, dial dialFunc, tg *targets) {
	for i := range 5 {
		c := mustDial(t, dial, tg.echo)
		if err := echoRoundTrip(c, []byte("before close")); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := c.Close(); err != nil {
			t.Fatalf("close %d: %v (the client got no CLOSE_RSP)", i, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("close %d took %v", i, d)
		}
	}
}

// withDeadlines wraps the gRPC egress dialer's connections, whose
// Set*Deadline methods fail, so that the shared checks' deadlines still
// bound them: a deadline that passes closes the connection.
func withDeadlines(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &deadlineConn{Conn: c}, nil
	}
}

// deadlineConn closes its connection when the latest deadline set passes.
type deadlineConn struct {
	net.Conn
	mu    sync.Mutex
	timer *time.Timer
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if !t.IsZero() {
		c.timer = time.AfterFunc(time.Until(t), func() { c.Conn.Close() })
	}
	return nil
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error  { return c.SetDeadline(t) }
func (c *deadlineConn) SetWriteDeadline(t time.Time) error { return c.SetDeadline(t) }

func (c *deadlineConn) Close() error {
	c.SetDeadline(time.Time{})
	return c.Conn.Close()
}
