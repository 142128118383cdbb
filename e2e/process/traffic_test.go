//go:build linux

package process

// This file is the traffic side of the harness: CONNECT clients, verified
// transfers, in-process targets and the re-executed helper processes.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// CONNECT clients.

// tunnelConn is a frontend connection after its response head: reads go
// through the reader that parsed the head, so no tunneled byte is lost.
type tunnelConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *tunnelConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection if the transport supports it.
func (c *tunnelConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// connectRequest is the request kube-apiserver's egress selector writes.
func connectRequest(dest string) string {
	return "CONNECT " + dest + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
}

// request writes req on c and reads the response head within
// connectTimeout. It returns the status line without its CRLF.
func request(c net.Conn, req string) (*tunnelConn, string, error) {
	if err := c.SetDeadline(time.Now().Add(connectTimeout)); err != nil {
		return nil, "", err
	}
	if _, err := io.WriteString(c, req); err != nil {
		return nil, "", fmt.Errorf("write request: %w", err)
	}
	r := bufio.NewReader(c)
	status, err := r.ReadString('\n')
	if err != nil {
		return nil, "", fmt.Errorf("read status line (got %q): %w", status, err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, "", fmt.Errorf("read header after %q: %w", status, err)
		}
		if line == "\r\n" || line == "\n" {
			break
		}
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, "", err
	}
	return &tunnelConn{Conn: c, r: r}, strings.TrimRight(status, "\r\n"), nil
}

// statusCode returns the code of an HTTP/1.x status line, or 0.
func statusCode(status string) int {
	f := strings.Fields(status)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return 0
	}
	code, _ := strconv.Atoi(f[1])
	return code
}

// dialer opens a fresh frontend connection; its cleanup is the caller's.
type dialer func(t *testing.T) net.Conn

// udsDialer dials the server's unix socket.
func udsDialer(path string) dialer {
	return func(t *testing.T) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("unix", path, connectTimeout)
		if err != nil {
			t.Fatalf("dial unix %s: %v", path, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

// tlsDialer dials the TCP+mTLS frontend and completes the handshake.
func tlsDialer(addr string, cfg *tls.Config) dialer {
	return func(t *testing.T) net.Conn {
		t.Helper()
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: connectTimeout}, Config: cfg}
		ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("dial tls %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

// connectStatus sends a CONNECT for dest on a fresh connection and returns
// the connection and status line; a missing answer fails the test.
func connectStatus(t *testing.T, dial dialer, dest string) (*tunnelConn, string) {
	t.Helper()
	c, status, err := request(dial(t), connectRequest(dest))
	if err != nil {
		t.Fatalf("CONNECT %s: %v", dest, err)
	}
	return c, status
}

// mustConnect sends a CONNECT for dest and requires 200.
func mustConnect(t *testing.T, dial dialer, dest string) *tunnelConn {
	t.Helper()
	c, status := connectStatus(t, dial, dest)
	if statusCode(status) != 200 {
		t.Fatalf("CONNECT %s: got %q, want 200", dest, status)
	}
	return c
}

// expectClosed requires the peer to end c (EOF or reset) within timeout and
// returns how long that took.
func expectClosed(t *testing.T, c net.Conn, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := c.SetReadDeadline(start.Add(timeout)); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open %s later (read %d more bytes)", timeout, n)
	}
	return time.Since(start)
}

// ---------------------------------------------------------------------------
// Verified transfers.

// checkEcho sends n random bytes through c to an echo target while reading
// the echo concurrently, and compares SHA-256 sums.
func checkEcho(t *testing.T, c net.Conn, n int) {
	t.Helper()
	data := make([]byte, n)
	rand.NewChaCha8(seed(uint64(n))).Read(data)
	want := sha256.Sum256(data)
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() { _, err := c.Write(data); werr <- err }()
	h := sha256.New()
	got, err := io.CopyN(h, c, int64(n))
	if err != nil {
		t.Fatalf("echo: read %d of %d bytes: %v", got, n, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("echo: write: %v", err)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo: %d bytes came back with a different SHA-256", n)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
}

// checkHalfClose sends n random bytes to an echo target, half-closes, and
// requires the whole echo followed by EOF: the end of the client's writing
// must travel to the target and the target's back to the client, while
// bytes still flow the other way.
func checkHalfClose(t *testing.T, c *tunnelConn, n int) {
	t.Helper()
	data := make([]byte, n)
	rand.NewChaCha8(seed(uint64(n) + 1)).Read(data)
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("half-close: read %d of %d bytes, then: %v (want EOF after all of them)", len(got), n, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("half-close: write or CloseWrite: %v", err)
	}
	if len(got) != n || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("half-close: got %d bytes back before EOF, want the %d sent (SHA-256 equal: %v)",
			len(got), n, sha256.Sum256(got) == sha256.Sum256(data))
	}
}

// Bulk target protocol: the client sends one mode byte and a big-endian
// uint64 n. Mode 'D': the target sends n bytes of pattern(n) and then their
// SHA-256. Mode 'U': the target reads n bytes and answers with their SHA-256.
const (
	bulkDownload = 'D'
	bulkUpload   = 'U'
)

func seed(n uint64) [32]byte {
	var s [32]byte
	binary.BigEndian.PutUint64(s[:], n)
	copy(s[8:], "tunnel-e2e-process")
	return s
}

// pattern returns the deterministic byte stream of an n-byte transfer.
func pattern(n uint64) io.Reader { return rand.NewChaCha8(seed(n)) }

func bulkHeader(mode byte, n uint64) []byte {
	h := make([]byte, 9)
	h[0] = mode
	binary.BigEndian.PutUint64(h[1:], n)
	return h
}

// checkDownload asks a bulk target for n bytes and verifies them against
// both the target's trailer and the expected pattern.
func checkDownload(t *testing.T, c net.Conn, n uint64) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(bulkHeader(bulkDownload, n)); err != nil {
		t.Fatalf("download: write header: %v", err)
	}
	h := sha256.New()
	if got, err := io.CopyN(h, c, int64(n)); err != nil {
		t.Fatalf("download: read %d of %d bytes: %v", got, n, err)
	}
	var trailer [sha256.Size]byte
	if _, err := io.ReadFull(c, trailer[:]); err != nil {
		t.Fatalf("download: read checksum: %v", err)
	}
	want := sha256.New()
	io.CopyN(want, pattern(n), int64(n))
	switch got := h.Sum(nil); {
	case !bytes.Equal(got, trailer[:]):
		t.Fatalf("download: SHA-256 of %d received bytes %x, target sent %x", n, got, trailer)
	case !bytes.Equal(got, want.Sum(nil)):
		t.Fatalf("download: received bytes differ from the pattern")
	}
}

// checkUpload sends n pattern bytes to a bulk target and compares the
// SHA-256 it answers with.
func checkUpload(t *testing.T, c net.Conn, n uint64) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	w := io.MultiWriter(c, h)
	if _, err := c.Write(bulkHeader(bulkUpload, n)); err != nil {
		t.Fatalf("upload: write header: %v", err)
	}
	if _, err := io.CopyN(w, pattern(n), int64(n)); err != nil {
		t.Fatalf("upload: write: %v", err)
	}
	var got [sha256.Size]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		t.Fatalf("upload: read checksum: %v", err)
	}
	if !bytes.Equal(got[:], h.Sum(nil)) {
		t.Fatalf("upload: target hashed %x, sent %x", got, h.Sum(nil))
	}
}

// ---------------------------------------------------------------------------
// Targets.

// serveEcho copies everything back and half-closes after EOF.
func serveEcho(c net.Conn) {
	io.Copy(c, c)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// serveBulk implements the bulk target protocol (see bulkDownload).
func serveBulk(c net.Conn) {
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	n := binary.BigEndian.Uint64(hdr[1:])
	h := sha256.New()
	switch hdr[0] {
	case bulkDownload:
		if _, err := io.CopyN(io.MultiWriter(c, h), pattern(n), int64(n)); err != nil {
			return
		}
	case bulkUpload:
		if _, err := io.CopyN(h, c, int64(n)); err != nil {
			return
		}
	default:
		return
	}
	c.Write(h.Sum(nil))
}

// targetServer accepts connections and runs handle on each until closed.
type targetServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newTargetServer(ln net.Listener, handle func(net.Conn)) *targetServer {
	s := &targetServer{ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.acceptLoop(handle)
	return s
}

func (s *targetServer) acceptLoop(handle func(net.Conn)) {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.drop(c)
			handle(c)
		}()
	}
}

func (s *targetServer) drop(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// Close stops accepting, closes every connection and waits for handlers.
func (s *targetServer) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// startTarget listens on host (port chosen by the kernel) in this process
// and returns the address; cleanup closes it and waits for its goroutines.
func startTarget(t *testing.T, host string, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("target listen on %s: %v", host, err)
	}
	s := newTargetServer(ln, handle)
	t.Cleanup(s.Close)
	return ln.Addr().String()
}

// closedPort returns host:port where nothing listens (a port the kernel
// just handed out and took back).
func closedPort(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// ---------------------------------------------------------------------------
// Helper processes: the test binary re-executed (e.g. inside a network
// namespace) with helperRoleEnv set.

// helperListeningRE matches the line a target helper prints when ready.
var helperListeningRE = regexp.MustCompile(`helper listening addr=(\S+)`)

// Exit codes of the dial helper.
const (
	helperDialOK     = 0
	helperDialFailed = 3
	helperUsage      = 2
)

// runHelper acts out role: "echo" or "bulk" serve on addr until killed;
// "dial" tries one TCP connection to addr and exits helperDialOK or
// helperDialFailed.
func runHelper(role, addr string) int {
	switch role {
	case "echo", "bulk":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "helper: listen %s: %v\n", addr, err)
			return 1
		}
		handle := serveEcho
		if role == "bulk" {
			handle = serveBulk
		}
		fmt.Printf("helper listening addr=%s\n", ln.Addr())
		newTargetServer(ln, handle).wg.Wait()
		return 1
	case "dial":
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			fmt.Printf("helper dial %s failed: %v\n", addr, err)
			return helperDialFailed
		}
		c.Close()
		fmt.Printf("helper dial %s connected\n", addr)
		return helperDialOK
	}
	fmt.Fprintf(os.Stderr, "helper: unknown role %q\n", role)
	return helperUsage
}

// helperEnv returns the environment that makes the test binary a helper.
func helperEnv(role, addr string) []string {
	return []string{helperRoleEnv + "=" + role, helperAddrEnv + "=" + addr}
}

// testBinary returns the path of the running test binary, for re-exec.
func testBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}
