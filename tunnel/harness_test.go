package tunnel

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/certs"
)

// The harness runs a real server, real agents and real targets in-process:
// TCP on loopback, TLS 1.3 with generated certificates, yamux, and the
// CONNECT frontend on a unix socket. Readiness is waited for on channels.

// testNodes are the agent certificates every harness generates.
var testNodes = []certs.Node{
	{Name: "node-a", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}},
	{Name: "node-b", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.2")}},
	{Name: "node-c"},
}

type harness struct {
	t         *testing.T
	files     certs.Files
	pool      *x509.CertPool
	srv       *Server
	agentAddr string
	ssh       *sshHarness // set when the test runs over SSH (ssh_test.go)
	sock      string
}

// newHarness starts a server; mod adjusts its config before it starts.
func newHarness(t *testing.T, mod func(*ServerConfig)) *harness {
	t.Helper()
	checkLeaks(t)
	dir := t.TempDir()
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(dir, "pki"), Nodes: testNodes})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, files: files}
	if h.pool, err = certs.LoadPool(files.CACert); err != nil {
		t.Fatal(err)
	}
	h.startServer(mod)
	return h
}

// replica starts another server with the same certificates: a replica of
// h's (ha_test.go), with its own CONNECT socket and its agent listener on
// agentAddr, or on a free port if that is empty.
func (h *harness) replica(mod func(*ServerConfig), agentAddr string) *harness {
	h.t.Helper()
	r := &harness{t: h.t, files: h.files, pool: h.pool, agentAddr: agentAddr}
	r.startServer(mod)
	return r
}

// advertiseSelf, as a test's ServerConfig.AdvertiseAddress, stands for the
// address of the server's own agent listener.
const advertiseSelf = "self:0"

// startServer starts h's server and its listeners, the agent listener on
// h.agentAddr if set.
func (h *harness) startServer(mod func(*ServerConfig)) {
	t := h.t
	h.sock = filepath.Join(t.TempDir(), "s.sock")
	agentLn := listenTCP(t, cmp.Or(h.agentAddr, "127.0.0.1:0"))
	h.agentAddr = agentLn.Addr().String()
	cert := h.keyPair(h.files.ServerCert, h.files.ServerKey)
	cfg := DefaultServerConfig()
	cfg.AgentTLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: h.pool}
	cfg.Logger = testLogger(t)
	if mod != nil {
		mod(&cfg)
	}
	if cfg.AdvertiseAddress == advertiseSelf {
		cfg.AdvertiseAddress = h.agentAddr
	}
	var err error
	if h.srv, err = NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	udsLn, err := ListenUnix(h.sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	h.goServe(func() error { return h.srv.ServeAgents(agentLn) })
	h.goServe(func() error { return h.srv.ServeConnect(udsLn) })
	if overSSH(t) {
		h.startSSH() // agents connect to its listener instead (ssh_test.go)
	}
	srv := h.srv
	t.Cleanup(func() { srv.Close() })
}

func (h *harness) goServe(serve func() error) {
	done := make(chan error, 1)
	go func() { done <- serve() }()
	srv := h.srv
	h.t.Cleanup(func() {
		srv.Close() // closes the listener serve runs on
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

// agentConfig returns a config for an agent holding node's certificate.
func (h *harness) agentConfig(certNode string) AgentConfig {
	f := h.files.Agents[certNode]
	cfg := DefaultAgentConfig()
	cfg.ServerAddress = h.agentAddr
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{h.keyPair(f[0], f[1])}, RootCAs: h.pool, ServerName: "localhost"}
	if h.ssh != nil {
		cfg.SSH = h.ssh.agentConfig(certNode) // TLS stays set, unused
	}
	cfg.NodeName = certNode
	for _, n := range testNodes {
		if n.Name == certNode {
			cfg.NodeIPs = n.IPs
		}
	}
	cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	cfg.DrainTimeout = time.Millisecond // stop is a kill; drain tests set their own
	cfg.Logger = testLogger(h.t).With("agent", certNode)
	return cfg
}

// runningAgent is an agent under test; stop ends it and waits.
type runningAgent struct {
	*Agent
	stop func()
}

// startAgent runs an agent and waits until the server counts one more.
func (h *harness) startAgent(cfg AgentConfig) *runningAgent {
	h.t.Helper()
	before := h.srv.Agents()
	a := h.runAgent(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.srv.WaitAgents(ctx, before+1); err != nil {
		h.t.Fatal(err)
	}
	return a
}

// runAgent runs an agent without waiting for it to register.
func (h *harness) runAgent(cfg AgentConfig) *runningAgent {
	a, err := NewAgent(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	h.t.Cleanup(stop)
	return &runningAgent{Agent: a, stop: stop}
}

// connect sends the egress selector's exact CONNECT bytes on the unix socket
// and returns the connection and the response.
func (h *harness) connect(dest string) (net.Conn, *http.Response) {
	h.t.Helper()
	c, err := net.Dial("unix", h.sock)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c, sendConnect(h.t, c, dest)
}

// sendConnect writes a CONNECT for dest on c and reads the answer; the
// response is read byte by byte so no tunneled byte is buffered away.
func sendConnect(t *testing.T, c net.Conn, dest string) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", dest); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReaderSize(oneByteReader{c}, 16), nil)
	if err != nil {
		t.Fatalf("reading CONNECT response: %v", err)
	}
	return res
}

// oneByteReader reads one byte at a time, so a bufio.Reader over it never
// reads past the end of the response header.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 1)]) }

// mustConnect expects a 200 and returns the tunneled connection.
func (h *harness) mustConnect(dest string) net.Conn {
	h.t.Helper()
	c, res := h.connect(dest)
	if res.StatusCode != http.StatusOK {
		h.t.Fatalf("CONNECT %s: %s", dest, res.Status)
	}
	return c
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

// connPair dials ln and accepts the connection: both ends, closed at
// cleanup.
func connPair(t *testing.T, ln net.Listener) (client, server net.Conn) {
	t.Helper()
	client, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// startEcho serves an echo target on addr and returns its address. It
// echoes until the client half-closes, then half-closes back.
func startEcho(t *testing.T, addr string) string {
	ln := listenTCP(t, addr)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

// echoCheck sends n random bytes over c while reading them back, and fails
// on any difference.
func echoCheck(c net.Conn, n int) error {
	want := make([]byte, n)
	rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		errc <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo read: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("echo write: %w", err)
	}
	if string(got) != string(want) {
		return errors.New("echo: bytes differ")
	}
	return nil
}

// waitClosed waits up to d for c to report EOF or an error on read.
func waitClosed(c net.Conn, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("connection still open after %s", d)
	}
	return nil
}

// registerOnce makes an agent of cfg connect and register once, as Run's
// first attempt does, within 5 seconds, and closes the session again; it
// returns the error that kept the agent from registering.
func registerOnce(t *testing.T, cfg AgentConfig) error {
	t.Helper()
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := a.connect(ctx, a.cfg.ServerAddress)
	if err != nil {
		return err
	}
	s.sess.Close()
	return nil
}
