//go:build linux

package process

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"
)

// notifyTimeout bounds the wait for one sd_notify datagram.
const notifyTimeout = 15 * time.Second

// notifySocket is the unixgram socket systemd gives a Type=notify service
// in $NOTIFY_SOCKET; the test plays systemd.
type notifySocket struct {
	path string
	conn *net.UnixConn
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "tnl-ntf-") // short: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); os.RemoveAll(dir) })
	return &notifySocket{path: path, conn: conn}
}

// wrap returns the argv prefix that runs a binary with $NOTIFY_SOCKET set.
func (n *notifySocket) wrap() []string { return []string{"env", "NOTIFY_SOCKET=" + n.path} }

// next returns the next datagram, failing after timeout.
func (n *notifySocket) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	msg, err := n.read(timeout)
	if err != nil {
		t.Fatalf("no sd_notify message within %s: %v", timeout, err)
	}
	return msg
}

func (n *notifySocket) read(timeout time.Duration) (string, error) {
	if err := n.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	buf := make([]byte, 4096)
	k, err := n.conn.Read(buf)
	return string(buf[:k]), err
}

// expectNone requires no datagram for d.
func (n *notifySocket) expectNone(t *testing.T, d time.Duration, while string) {
	t.Helper()
	if msg, err := n.read(d); err == nil {
		t.Fatalf("sd_notify %q while %s", msg, while)
	}
}

// reconnectingRE matches the agent's line after a failed attempt.
var reconnectingRE = regexp.MustCompile(`msg="connecting failed"`)

// gate forwards TCP to a fixed address once opened; until then it closes
// every connection it accepts, as a server that is down would.
type gate struct {
	ln   net.Listener
	mu   sync.Mutex
	open bool
	wg   sync.WaitGroup
}

func startGate(t *testing.T, to string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln}
	g.wg.Add(1)
	go g.acceptLoop(to)
	t.Cleanup(func() { ln.Close(); g.wg.Wait() })
	return g
}

func (g *gate) acceptLoop(to string) {
	defer g.wg.Done()
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		open := g.open
		g.mu.Unlock()
		if !open {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", to)
		if err != nil {
			c.Close()
			continue
		}
		g.wg.Add(2)
		go func() { defer g.wg.Done(); io.Copy(up, c); up.Close() }()
		go func() { defer g.wg.Done(); io.Copy(c, up); c.Close() }()
		// The listener's Close ends acceptLoop; the copies end with the
		// processes (killed in cleanup) closing their ends.
	}
}

func (g *gate) openUp() {
	g.mu.Lock()
	g.open = true
	g.mu.Unlock()
}

// TestSystemdNotify runs both binaries the way systemd runs a Type=notify
// service: the server says READY=1 once it listens, the agent only once it
// has registered (not while the server is unreachable), and each says
// STOPPING=1 on SIGTERM before exiting cleanly.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	srvNotify := newNotifySocket(t)
	srv := startServer(t, loopbackCerts(t), serverOpts{wrap: srvNotify.wrap()})
	if msg := srvNotify.next(t, notifyTimeout); msg != "READY=1" {
		t.Fatalf("server sent %q first, want READY=1", msg)
	}

	agentNotify := newNotifySocket(t)
	g := startGate(t, srv.agentAddr)
	agentSrv := *srv
	agentSrv.agentAddr = g.ln.Addr().String()
	agent := startProc(t, "tunnel-agent", nil, agentArgv(&agentSrv, agentOpts{
		node: nodeA, nodeIPs: []string{nodeAIP}, wrap: agentNotify.wrap(),
		extra: []string{"--reconnect-min-backoff=50ms", "--reconnect-max-backoff=200ms"},
	})...)
	agent.waitLog(t, reconnectingRE, startTimeout)
	agentNotify.expectNone(t, time.Second, "the server is unreachable")
	if registeredRE.MatchString(agent.out.String()) {
		t.Fatal("agent registered through a closed gate")
	}

	g.openUp()
	start := time.Now()
	if msg := agentNotify.next(t, notifyTimeout); msg != "READY=1" {
		t.Fatalf("agent sent %q, want READY=1", msg)
	}
	t.Logf("agent READY=1 %s after the server became reachable", time.Since(start).Round(time.Millisecond))
	agent.waitLog(t, registeredRE, startTimeout)

	agent.signal(t, syscall.SIGTERM)
	if msg := agentNotify.next(t, notifyTimeout); msg != "STOPPING=1" {
		t.Fatalf("agent sent %q after SIGTERM, want STOPPING=1", msg)
	}
	if code := agent.waitExit(t, exitBound); code != 0 {
		t.Fatalf("agent exited %d after SIGTERM", code)
	}
	srv.signal(t, syscall.SIGTERM)
	if msg := srvNotify.next(t, notifyTimeout); msg != "STOPPING=1" {
		t.Fatalf("server sent %q after SIGTERM, want STOPPING=1", msg)
	}
	if code := srv.waitExit(t, exitBound); code != 0 {
		t.Fatalf("server exited %d after SIGTERM", code)
	}
}
