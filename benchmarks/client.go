package benchmarks

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// DefaultDialTimeout bounds a dial (and, through a tunnel, the CONNECT
// exchange) when the caller's context has no deadline.
const DefaultDialTimeout = 30 * time.Second

// maxResponseHeader bounds a CONNECT response header.
const maxResponseHeader = 4 << 10

// Dialer opens a fresh connection to the target, directly or through a
// tunnel.
type Dialer interface {
	Dial(ctx context.Context) (net.Conn, error)
}

// DirectDialer dials the target over plain TCP: the baseline.
type DirectDialer struct {
	Addr string // the target's host:port
}

// Dial implements Dialer.
func (d DirectDialer) Dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.Addr)
}

// ConnectDialer opens tunnels through a tunnel-server's CONNECT frontend,
// exactly as kube-apiserver's egress selector does: a fresh frontend
// connection per tunnel and one CONNECT request on it.
type ConnectDialer struct {
	// Network and Addr locate the frontend: "unix" and a socket path, or
	// "tcp" and host:port (which needs TLS).
	Network, Addr string
	// TLS is the client configuration for a TCP frontend: the client
	// certificate and the CA that verifies the server. Nil for "unix".
	TLS *tls.Config
	// Dest is the CONNECT target, host:port.
	Dest string
}

// Dial implements Dialer.
func (d ConnectDialer) Dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var nd net.Dialer
	c, err := nd.DialContext(ctx, d.Network, d.Addr)
	if err != nil {
		return nil, fmt.Errorf("benchmarks: dial frontend: %w", err)
	}
	if d.TLS != nil {
		tc := tls.Client(c, d.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("benchmarks: frontend TLS handshake: %w", err)
		}
		c = tc
	}
	tc, err := Connect(ctx, c, d.Dest)
	if err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultDialTimeout)
}

// ConnectError is a CONNECT answered with a status other than 200.
type ConnectError struct {
	Dest       string
	Status     int
	StatusLine string // e.g. "HTTP/1.1 502 no agent for 10.0.3.7"
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("benchmarks: CONNECT %s: %s", e.Dest, e.StatusLine)
}

// Connect sends kube-apiserver's exact CONNECT request for dest on c and
// reads the answer within ctx, never consuming a byte past the response
// header. On 200 it returns the tunneled connection.
func Connect(ctx context.Context, c net.Conn, dest string) (net.Conn, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultDialTimeout)
	}
	c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", dest); err != nil {
		return nil, fmt.Errorf("benchmarks: CONNECT %s: write: %w", dest, err)
	}
	hdr, rest, err := readResponseHeader(c)
	if err != nil {
		return nil, fmt.Errorf("benchmarks: CONNECT %s: %w", dest, err)
	}
	line, _, _ := strings.Cut(string(hdr), "\r\n")
	if status := statusCode(line); status != 200 {
		return nil, &ConnectError{Dest: dest, Status: status, StatusLine: line}
	}
	if len(rest) > 0 {
		return &prefixConn{Conn: c, rest: rest}, nil
	}
	return c, nil
}

// readResponseHeader reads until the blank line that ends the header and
// returns the header and any bytes read after it. The frontend answers a
// CONNECT in one write and the target speaks only after the client, so rest
// is empty in practice; it is kept rather than lost if not.
func readResponseHeader(c net.Conn) (hdr, rest []byte, err error) {
	buf := make([]byte, 0, 256)
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= maxResponseHeader {
				return nil, nil, fmt.Errorf("response header over %d bytes", maxResponseHeader)
			}
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			return buf[:i+4], buf[i+4:], nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading response: %w (after %q)", err, buf)
		}
	}
}

// statusCode parses "HTTP/1.1 200 reason"; 0 means malformed.
func statusCode(line string) int {
	f := strings.SplitN(line, " ", 3)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/") {
		return 0
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		return 0
	}
	return n
}

// prefixConn returns bytes read past a response header before reading
// from the connection again.
type prefixConn struct {
	net.Conn
	rest []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the underlying connection.
func (c *prefixConn) CloseWrite() error { return closeWrite(c.Conn) }
