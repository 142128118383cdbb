//go:build linux

package attack

// The client side of the harness: CONNECT requests on the unix socket and
// the TCP+mTLS frontend, verified echoes, and in-process targets on node
// addresses in 127.0.0.0/8.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// tunnelConn is a frontend connection after its response head; reads go
// through the reader that parsed the head.
type tunnelConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *tunnelConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func connectRequest(dest string) string {
	return "CONNECT " + dest + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
}

// request writes req on c and reads the response head within timeout; it
// returns the status code and line.
func request(c net.Conn, req string, timeout time.Duration) (*tunnelConn, int, string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req); err != nil {
		return nil, 0, "", fmt.Errorf("write request: %w", err)
	}
	r := bufio.NewReader(c)
	status, err := r.ReadString('\n')
	if err != nil {
		return nil, 0, "", fmt.Errorf("read status line (got %q): %w", status, err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, 0, "", fmt.Errorf("read header after %q: %w", status, err)
		}
		if line == "\r\n" || line == "\n" {
			break
		}
	}
	c.SetDeadline(time.Time{})
	status = strings.TrimRight(status, "\r\n")
	return &tunnelConn{Conn: c, r: r}, statusCode(status), status, nil
}

func statusCode(status string) int {
	f := strings.Fields(status)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return 0
	}
	code, _ := strconv.Atoi(f[1])
	return code
}

// dialUDS dials the server's unix socket frontend.
func dialUDS(s *server) (net.Conn, error) {
	return net.DialTimeout("unix", s.udsPath, 5*time.Second)
}

// dialFrontend dials the TCP+mTLS frontend with cfg and completes the
// handshake.
func dialFrontend(s *server, cfg *tls.Config) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.DialContext(ctx, "tcp", s.frontendAddr)
}

// connectUDS sends a CONNECT for dest on a fresh unix socket connection.
func connectUDS(s *server, dest string) (*tunnelConn, int, string, error) {
	c, err := dialUDS(s)
	if err != nil {
		return nil, 0, "", err
	}
	tc, code, status, err := request(c, connectRequest(dest), 15*time.Second)
	if err != nil {
		c.Close()
	}
	return tc, code, status, err
}

// echoOnce sends n random bytes through c to an echo target and checks the
// SHA-256 of what comes back.
func echoOnce(c net.Conn, n int) error {
	data := make([]byte, n)
	rand.Read(data)
	want := sha256.Sum256(data)
	c.SetDeadline(time.Now().Add(ioTimeout))
	defer c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() { _, err := c.Write(data); werr <- err }()
	h := sha256.New()
	if got, err := io.CopyN(h, c, int64(n)); err != nil {
		return fmt.Errorf("echo: read %d of %d bytes: %w", got, n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("echo: write: %w", err)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		return errors.New("echo: bytes came back different")
	}
	return nil
}

// tunnelWorks sends a CONNECT for dest over the unix socket and a verified
// 64 KiB echo through it, and returns how long it took, or why it failed.
func tunnelWorks(s *server, dest string) (time.Duration, error) {
	start := time.Now()
	c, code, status, err := connectUDS(s, dest)
	if err != nil {
		return 0, fmt.Errorf("CONNECT %s: %w", dest, err)
	}
	defer c.Close()
	if code != 200 {
		return 0, fmt.Errorf("CONNECT %s: %q, want 200", dest, status)
	}
	if err := echoOnce(c, 64<<10); err != nil {
		return 0, fmt.Errorf("CONNECT %s: %w", dest, err)
	}
	return time.Since(start), nil
}

// mustTunnel requires tunnelWorks.
func mustTunnel(t *testing.T, s *server, dest string) {
	t.Helper()
	if _, err := tunnelWorks(s, dest); err != nil {
		t.Fatal(err)
	}
}

// ---------------------------------------------------------------------------
// Targets.

// startTarget listens on host:0 and serves each connection with serve in
// a goroutine until the test ends; it returns host:port.
func startTarget(t *testing.T, host string, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { mu.Lock(); delete(conns, c); mu.Unlock() }()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// serveEcho writes back what it reads, and closes at EOF.
func serveEcho(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
}

// bulkTarget writes without end to each connection while reading it, and
// reports when and how each connection ended.
type bulkTarget struct {
	addr  string
	ended chan bulkEnd
}

type bulkEnd struct {
	at   time.Time
	how  string // "read EOF", "read error: ...", "write error: ..."
	sent int64
}

// startBulk starts a bulkTarget on host.
func startBulk(t *testing.T, host string) *bulkTarget {
	t.Helper()
	b := &bulkTarget{ended: make(chan bulkEnd, 64)}
	b.addr = startTarget(t, host, func(c net.Conn) {
		defer c.Close()
		var once sync.Once
		var sent atomic.Int64
		end := func(how string) {
			once.Do(func() { b.ended <- bulkEnd{time.Now(), how, sent.Load()} })
			c.Close()
		}
		go func() {
			buf := make([]byte, 32<<10)
			for {
				if _, err := c.Read(buf); err != nil {
					if errors.Is(err, io.EOF) {
						end("read EOF")
					} else {
						end("read error: " + err.Error())
					}
					return
				}
			}
		}()
		buf := bytes.Repeat([]byte("0123456789abcdef"), 2<<10)
		for {
			n, err := c.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				end("write error: " + err.Error())
				return
			}
		}
	})
	return b
}

// waitEnd waits up to timeout for a connection of b to end.
func (b *bulkTarget) waitEnd(timeout time.Duration) (bulkEnd, bool) {
	select {
	case e := <-b.ended:
		return e, true
	case <-time.After(timeout):
		return bulkEnd{}, false
	}
}

// blockedTarget is a listening socket on host whose accept queue is full
// and never drained: Linux drops SYNs to it, so a dial there hangs in
// SYN-SENT until its own timeout. It never leaves loopback.
type blockedTarget struct {
	addr string
}

// startBlocked makes a blockedTarget on host and checks that a dial to it
// does hang.
func startBlocked(t *testing.T, host string) *blockedTarget {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	ip := net.ParseIP(host).To4()
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte(ip)}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // an accept queue of one
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	b := &blockedTarget{addr: net.JoinHostPort(host, strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))}
	// Fill the queue, then prove a further dial hangs.
	for i := 0; i < 2; i++ {
		c, err := net.DialTimeout("tcp", b.addr, 300*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	start := time.Now()
	if c, err := net.DialTimeout("tcp", b.addr, 700*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("blocked target %s accepted a connection: cannot make a dial hang on this kernel", b.addr)
	} else if time.Since(start) < 500*time.Millisecond {
		t.Fatalf("dial to blocked target %s failed at once (%v): cannot make a dial hang on this kernel", b.addr, err)
	}
	return b
}
