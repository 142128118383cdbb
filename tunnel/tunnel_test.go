package tunnel

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/tunnel/mux"
)

// recordingDial returns a Dial hook that notes which agent dialed what, and
// dials for real.
func recordingDial(name string, log *dialLog) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		log.add(name + " " + addr)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

type dialLog struct {
	mu   sync.Mutex
	last string
}

func (l *dialLog) add(s string) { l.mu.Lock(); l.last = s; l.mu.Unlock() }
func (l *dialLog) get() string  { l.mu.Lock(); defer l.mu.Unlock(); return l.last }

func TestRouting(t *testing.T) {
	h := newHarness(t, func(c *ServerConfig) { c.TrustAgentRoutes = true })
	var log dialLog
	a := h.agentConfig("node-a") // 127.0.0.1 from its certificate
	a.Dial = recordingDial("node-a", &log)
	h.startAgent(a)
	b := h.agentConfig("node-b")
	b.NodeIPs = nil
	b.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.1.0/24"), netip.MustParsePrefix("127.0.0.0/16")}
	b.AllowCIDRs = b.PodCIDRs // loopback: a pod range alone does not let it through
	b.Dial = recordingDial("node-b", &log)
	h.startAgent(b)
	c := h.agentConfig("node-c")
	c.DefaultRoute = true
	c.AllowCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	c.ResolveNames = true
	c.Dial = recordingDial("node-c", &log)
	h.startAgent(c)

	echoA := startEcho(t, "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(echoA)
	echoCIDR := startEcho(t, "127.0.1.5:"+port)
	echoWide := startEcho(t, "127.0.7.7:"+port)
	echoDefault := startEcho(t, "127.1.2.9:"+port)
	for _, tc := range []struct{ dest, want string }{
		{echoA, "node-a " + echoA},                        // exact node IP
		{"node-a:" + port, "node-a " + echoA},             // node name, resolved by the agent
		{"NODE-A:" + port, "node-a " + echoA},             // names are case-insensitive
		{echoCIDR, "node-b " + echoCIDR},                  // pod CIDR
		{echoWide, "node-b " + echoWide},                  // shorter pod CIDR
		{echoDefault, "node-c " + echoDefault},            // default route
		{"localhost:" + port, "node-c 127.0.0.1:" + port}, // unknown name: default route; the agent dials the address it checked
	} {
		t.Run(tc.dest, func(t *testing.T) {
			conn := h.mustConnect(tc.dest)
			if err := echoCheck(conn, 4096); err != nil {
				t.Fatal(err)
			}
			if got := log.get(); got != tc.want {
				t.Errorf("dialed by %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFailureStatuses(t *testing.T) {
	h := newHarness(t, func(c *ServerConfig) { c.DialTimeout = 300 * time.Millisecond })
	a := h.agentConfig("node-a")
	a.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if strings.HasSuffix(addr, ":7") { // a destination that never answers
			<-ctx.Done()
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	h.startAgent(a)
	refusing := listenTCP(t, "127.0.0.1:0")
	closed := refusing.Addr().String()
	refusing.Close() // nothing listens there now: the node refuses

	for _, tc := range []struct {
		dest   string
		status string
	}{
		{"10.9.9.9:10250", "502 no agent for 10.9.9.9"},
		{"node-zz:10250", "502 no agent for node-zz"},
		{closed, "502 dial " + closed + ": connection refused"},
		{"127.0.0.1:7", "504 dial 127.0.0.1:7 timed out after 300ms"},
	} {
		t.Run(tc.dest, func(t *testing.T) {
			start := time.Now()
			c, res := h.connect(tc.dest)
			if res.Status != tc.status {
				t.Errorf("status %q, want %q", res.Status, tc.status)
			}
			body, _ := io.ReadAll(res.Body)
			if !strings.Contains(string(body), tc.status[4:]) {
				t.Errorf("body %q does not repeat the reason", body)
			}
			if err := waitClosed(c, 2*time.Second); err != nil {
				t.Error(err)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("answer took %s", took)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	h := newHarness(t, func(c *ServerConfig) { c.HeaderTimeout = 300 * time.Millisecond; c.MaxHeaderBytes = 1024 })
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"get", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusMethodNotAllowed},
		{"garbage", "hello\r\n\r\n", http.StatusBadRequest},
		{"no port", "CONNECT 10.0.0.1 HTTP/1.1\r\n\r\n", http.StatusBadRequest},
		{"bad port", "CONNECT 10.0.0.1:99999 HTTP/1.1\r\n\r\n", http.StatusBadRequest},
		{"http2", "CONNECT 10.0.0.1:80 HTTP/2.0\r\n\r\n", http.StatusBadRequest},
		{"bad header", "CONNECT 10.0.0.1:80 HTTP/1.1\r\nno colon\r\n\r\n", http.StatusBadRequest},
		{"oversized", "CONNECT 10.0.0.1:80 HTTP/1.1\r\nX: " + strings.Repeat("a", 2000) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("unix", h.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tc.req)
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != tc.status {
				t.Errorf("status %s, want %d", res.Status, tc.status)
			}
			if err := waitClosed(c, 2*time.Second); err != nil {
				t.Error(err)
			}
		})
	}
	t.Run("stalled header", func(t *testing.T) {
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "CONNECT 10.0.0.1:80 HTTP/1.1\r\n")
		if err := waitClosed(c, 3*time.Second); err != nil {
			t.Fatal(err)
		}
	})
}

func TestHalfClose(t *testing.T) {
	h := newHarness(t, nil)
	h.startAgent(h.agentConfig("node-a"))
	ln := listenTCP(t, "127.0.0.1:0")
	targetDone := make(chan error, 1)
	serveOne := func(f func(*net.TCPConn) error) {
		go func() {
			c, err := ln.Accept()
			if err != nil {
				targetDone <- err
				return
			}
			defer c.Close()
			targetDone <- f(c.(*net.TCPConn))
		}()
	}

	t.Run("client finishes first", func(t *testing.T) {
		// The target reads to EOF, then answers with a digest.
		serveOne(func(c *net.TCPConn) error {
			sum := sha256.New()
			if _, err := io.Copy(sum, c); err != nil {
				return err
			}
			_, err := c.Write(sum.Sum(nil))
			return err
		})
		c := h.mustConnect(ln.Addr().String())
		payload := []byte(strings.Repeat("half-close ", 100000))
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.(*net.UnixConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(payload)
		if string(got) != string(want[:]) {
			t.Fatalf("digest %x, want %x", got, want)
		}
		if err := <-targetDone; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("target finishes first", func(t *testing.T) {
		// The target says hello and half-closes; it still reads what
		// the client sends after it has seen EOF.
		got := make(chan string, 1)
		serveOne(func(c *net.TCPConn) error {
			io.WriteString(c, "banner")
			c.CloseWrite()
			b, err := io.ReadAll(c)
			got <- string(b)
			return err
		})
		c := h.mustConnect(ln.Addr().String())
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "banner" {
			t.Fatalf("read %q, %v", b, err)
		}
		io.WriteString(c, "after EOF")
		c.(*net.UnixConn).CloseWrite()
		if err := <-targetDone; err != nil {
			t.Fatal(err)
		}
		if s := <-got; s != "after EOF" {
			t.Fatalf("target read %q", s)
		}
	})
}

// TestThousandConcurrentTunnels: a thousand tunnels opened at once, then
// all moving data at once. It is about concurrency, not liveness: under
// -race on a loaded two-core machine, a keepalive ping of the SSH
// transport has waited behind the thousand tunnels' data for over its 10 s,
// so both ends give pings a minute here.
func TestThousandConcurrentTunnels(t *testing.T) {
	h := newHarness(t, func(c *ServerConfig) { c.KeepaliveTimeout = time.Minute })
	cfg := h.agentConfig("node-a")
	cfg.KeepaliveTimeout = time.Minute
	h.startAgent(cfg)
	echo := startEcho(t, "127.0.0.1:0")
	const n = 1000
	conns := make([]net.Conn, n)
	for i := range conns { // all open at once before any traffic
		conns[i] = h.mustConnect(echo)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echoCheck(c, 16<<10+i); err != nil {
				errs <- fmt.Errorf("tunnel %d: %w", i, err)
			}
			c.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestAgentLossEndsTunnelsPromptly(t *testing.T) {
	h := newHarness(t, nil)
	agent := h.startAgent(h.agentConfig("node-a"))
	echo := startEcho(t, "127.0.0.1:0")
	c := h.mustConnect(echo)
	if err := echoCheck(c, 1<<20); err != nil {
		t.Fatal(err)
	}
	go func() { // keep a transfer in flight while the agent dies
		buf := make([]byte, 32<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	agent.stop()
	if err := waitClosed(c, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("frontend connection ended %s after the agent stopped", time.Since(start))
	// The tunnel can end before the server has read the session's end: a
	// dial in between fails on the dead session instead (a 502 too).
	waitFor(t, "the server to drop the agent", func() bool { return h.srv.Agents() == 0 })
	_, res := h.connect(echo)
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(res.Status, "no agent") {
		t.Fatalf("after agent loss: %s", res.Status)
	}
}

func TestAgentRejected(t *testing.T) {
	h := newHarness(t, nil)
	for _, tc := range []struct {
		name string
		mod  func(*AgentConfig)
		want string
	}{
		{"unproven name", func(c *AgentConfig) { c.NodeName = "node-b" }, `does not prove node name "node-b"`},
		{"unproven IP", func(c *AgentConfig) { c.NodeIPs = []netip.Addr{netip.MustParseAddr("127.0.0.2")} }, "node IP 127.0.0.2 is not an IP SAN"},
		{"pod CIDR untrusted", func(c *AgentConfig) { c.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")} }, "need trusted agent routes"},
		{"default route untrusted", func(c *AgentConfig) { c.DefaultRoute = true }, "need trusted agent routes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := h.agentConfig("node-a")
			tc.mod(&cfg)
			err := registerOnce(t, cfg)
			var rej *RejectedError
			if !errors.As(err, &rej) || !strings.Contains(rej.Reason, tc.want) {
				t.Fatalf("got %v, want a rejection containing %q", err, tc.want)
			}
			if n := h.srv.Agents(); n != 0 {
				t.Fatalf("%d agents registered", n)
			}
		})
	}
	t.Run("certificate from another CA", func(t *testing.T) {
		other := newHarness(t, nil)
		cfg := other.agentConfig("node-a")
		cfg.ServerAddress = h.agentAddr
		cfg.TLS.RootCAs = h.pool
		if err := registerOnce(t, cfg); err == nil {
			t.Fatal("agent with a foreign certificate was accepted")
		}
		if n := h.srv.Agents(); n != 0 {
			t.Fatalf("%d agents registered", n)
		}
	})
}

func TestFrontendTCPRequiresClientCertificate(t *testing.T) {
	h := newHarness(t, nil)
	h.startAgent(h.agentConfig("node-a"))
	echo := startEcho(t, "127.0.0.1:0")
	serverCert := h.keyPair(h.files.ServerCert, h.files.ServerKey)
	ln := tls.NewListener(listenTCP(t, "127.0.0.1:0"), &tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientCAs: h.pool, ClientAuth: tls.RequireAndVerifyClientCert,
		VerifyConnection: FrontendClientPolicy([]string{"kube-apiserver"}),
	})
	h.goServe(func() error { return h.srv.ServeConnect(ln) })
	client := h.keyPair(h.files.ClientCert, h.files.ClientKey)

	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: h.pool, ServerName: "localhost", Certificates: []tls.Certificate{client}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if res := sendConnect(t, c, echo); res.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %s", res.Status)
	}
	if err := echoCheck(c, 100000); err != nil {
		t.Fatal(err)
	}

	agentFiles := h.files.Agents["node-a"]
	for name, certs := range map[string][]tls.Certificate{
		"no certificate":   nil,
		"node certificate": {h.keyPair(agentFiles[0], agentFiles[1])},
	} {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: h.pool, ServerName: "localhost", Certificates: certs})
		if err != nil {
			continue // refused during the handshake
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", echo)
		if _, err = c.Read(make([]byte, 1)); err == nil {
			t.Errorf("a client with %s got an answer", name)
		}
	}
}

// TestServerResetsStreamsAgentsOpen: the server accepts only an agent's
// control stream, so streams an agent opens beyond a small backlog are
// reset instead of each pinning a receive window of server memory.
func TestServerResetsStreamsAgentsOpen(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sess, err := dialTLS(ctx, h.agentAddr, cfg.TLS, agentSessionConfig(time.Second, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	const opened = 20
	reset := 0
	for i := range opened {
		st, err := sess.Open(ctx, []byte("x"))
		if err != nil {
			t.Fatalf("open stream %d: %v", i, err)
		}
		defer st.Close()
		st.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := st.Read(make([]byte, 1)); errors.Is(err, mux.ErrStreamReset) {
			reset++
		}
	}
	if want := opened - 1 - serverAcceptBacklog; reset < want {
		t.Fatalf("%d of %d agent-opened streams reset, want at least %d", reset, opened, want)
	}
}
