package benchmarks

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/tunnel-project/tunnel/certs"
)

// The probe is the least an encrypted tunnel can cost on this machine
// (DESIGN.md section 5): a plain three-hop relay
//
//	client ↔ ProbeServer ↔ TLS 1.3 ↔ ProbeAgent ↔ target
//
// with one fresh TLS connection per tunnel, no multiplexer, and one copy
// loop per direction with its own ProbeBufSize buffer. The client side is
// the tunnel's: a ConnectDialer sends CONNECT dest to the ProbeServer's
// listener. The ProbeServer then dials the ProbeAgent over TCP, completes a
// mutually authenticated TLS 1.3 handshake, and sends dest as one line; the
// agent dials dest over TCP and answers with one line, "OK" or "ERR
// reason", before the server answers the CONNECT. From then on bytes are
// copied as they come, and a source that ends half-closes its destination.
//
// Everything else is Go's default: TCP_NODELAY on every TCP connection,
// TLS record sizes as crypto/tls chooses them, no session resumption.

// ProbeBufSize is the copy buffer of each direction of each relay.
const ProbeBufSize = 32 << 10

// Probe handshake lines (see above).
const (
	probeOK      = "OK"
	probeErr     = "ERR "
	maxProbeLine = 1 << 10
	// maxConnectHeader bounds the CONNECT request the ProbeServer reads.
	maxConnectHeader = 4 << 10
)

// ProbeHandshakeTimeout bounds a tunnel's set-up in the probe: the
// CONNECT request, the TLS handshake and the agent's answer.
const ProbeHandshakeTimeout = 10 * time.Second

// ProbeServerTLS is the ProbeServer's side of the probe's TLS: TLS 1.3
// only, the client certificate of certFile and keyFile, and the agent
// verified under the CA bundle caFile as serverName.
func ProbeServerTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cert, pool, err := loadProbePKI(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: serverName,
		MinVersion: tls.VersionTLS13,
	}, nil
}

// ProbeAgentTLS is the ProbeAgent's side: TLS 1.3 only, the certificate of
// certFile and keyFile, and a client certificate required and verified
// under caFile.
func ProbeAgentTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cert, pool, err := loadProbePKI(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS13,
	}, nil
}

func loadProbePKI(caFile, certFile, keyFile string) (tls.Certificate, *x509.CertPool, error) {
	cert, err := certs.LoadKeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("benchmarks: probe certificate: %w", err)
	}
	pool, err := certs.LoadPool(caFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("benchmarks: probe CA: %w", err)
	}
	return cert, pool, nil
}

// relays is what both probe relays share: the accept loop, and the
// connections and goroutines that Close must end. Its zero value is not
// usable; call newRelays.
type relays struct {
	connServer
	ctx    context.Context // cancelled by Close; bounds every dial
	cancel context.CancelFunc
}

func newRelays(ln net.Listener) relays {
	ctx, cancel := context.WithCancel(context.Background())
	return relays{connServer: connServer{ln: ln}, ctx: ctx, cancel: cancel}
}

// Close stops the listener, closes every connection and waits for their
// goroutines.
func (r *relays) Close() error {
	r.cancel()
	return r.closeAll()
}

// ProbeServer is the probe's first relay: it answers CONNECT requests and
// carries each tunnel over a TLS connection of its own to a ProbeAgent.
type ProbeServer struct {
	relays
	agent string      // the ProbeAgent's host:port
	tls   *tls.Config // client side: TLS 1.3, a client certificate, the CA
}

// NewProbeServer returns a server for ln (a unix socket or TCP listener)
// that reaches the ProbeAgent at agentAddr with the client configuration
// cfg; call Serve to run it.
func NewProbeServer(ln net.Listener, agentAddr string, cfg *tls.Config) *ProbeServer {
	return &ProbeServer{relays: newRelays(ln), agent: agentAddr, tls: cfg}
}

// Serve accepts CONNECT requests until Close.
func (s *ProbeServer) Serve() error { return s.serve(s.handle) }

// handle serves one tunnel: CONNECT, a TLS connection to the agent, the
// agent's answer, 200, then the relay.
func (s *ProbeServer) handle(c net.Conn) {
	c.SetDeadline(time.Now().Add(ProbeHandshakeTimeout))
	dest, rest, err := readConnect(c)
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
		return
	}
	up, err := s.dialAgent(dest)
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s", len(err.Error()), err)
		return
	}
	if !s.track(up) {
		return
	}
	defer s.untrack(up)
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	relay(withPrefix(c, rest), up)
}

// dialAgent opens a TLS connection to the agent and asks it for dest.
func (s *ProbeServer) dialAgent(dest string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(s.ctx, ProbeHandshakeTimeout)
	defer cancel()
	d := tls.Dialer{Config: s.tls}
	c, err := d.DialContext(ctx, "tcp", s.agent)
	if err != nil {
		return nil, fmt.Errorf("benchmarks: probe agent %s: %w", s.agent, err)
	}
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	line, rest, err := probeExchange(c, dest)
	if err == nil && line != probeOK {
		err = fmt.Errorf("benchmarks: probe agent: dial %s: %s", dest, strings.TrimPrefix(line, probeErr))
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return withPrefix(c, rest), nil
}

// probeExchange sends dest as one line and reads the agent's answer.
func probeExchange(c net.Conn, dest string) (string, []byte, error) {
	if _, err := io.WriteString(c, dest+"\n"); err != nil {
		return "", nil, fmt.Errorf("benchmarks: probe agent: send: %w", err)
	}
	line, rest, err := readUntil(c, "\n", maxProbeLine)
	if err != nil {
		return "", nil, fmt.Errorf("benchmarks: probe agent: answer: %w", err)
	}
	return strings.TrimSuffix(string(line), "\n"), rest, nil
}

// ProbeAgent is the probe's second relay: for each TLS connection from a
// ProbeServer it dials the destination named on it and relays.
type ProbeAgent struct {
	relays
}

// NewProbeAgent returns an agent for ln, a TLS listener (tls.NewListener)
// whose configuration requires TLS 1.3 and a client certificate; call Serve
// to run it. Handshakes run in each connection's goroutine.
func NewProbeAgent(ln net.Listener) *ProbeAgent {
	return &ProbeAgent{relays: newRelays(ln)}
}

// Serve accepts TLS connections until Close.
func (a *ProbeAgent) Serve() error { return a.serve(a.handle) }

// handle serves one tunnel: the destination line, a TCP dial, the answer,
// then the relay.
func (a *ProbeAgent) handle(c net.Conn) {
	c.SetDeadline(time.Now().Add(ProbeHandshakeTimeout))
	line, rest, err := readUntil(c, "\n", maxProbeLine)
	if err != nil {
		return
	}
	dest := strings.TrimSuffix(string(line), "\n")
	ctx, cancel := context.WithTimeout(a.ctx, ProbeHandshakeTimeout)
	var d net.Dialer
	t, err := d.DialContext(ctx, "tcp", dest)
	cancel()
	if err != nil {
		io.WriteString(c, probeErr+err.Error()+"\n")
		return
	}
	if !a.track(t) {
		return
	}
	defer a.untrack(t)
	if _, err := io.WriteString(c, probeOK+"\n"); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	relay(withPrefix(c, rest), t)
}

// relay copies a to b and b to a, each direction in its own loop, until
// both have ended.
func relay(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(b, a)
	}()
	pipe(a, b)
	<-done
}

// pipe copies src to dst with a ProbeBufSize buffer. When src ends cleanly
// it half-closes dst; when either side fails it closes both, which ends
// the other direction too.
func pipe(dst, src net.Conn) {
	buf := make([]byte, ProbeBufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				dst.Close()
				return
			}
		}
		if errors.Is(err, io.EOF) {
			closeWrite(dst)
			return
		}
		if err != nil {
			src.Close()
			dst.Close()
			return
		}
	}
}

// readConnect reads a CONNECT request header and returns its target and
// any bytes read after the header.
func readConnect(c net.Conn) (string, []byte, error) {
	hdr, rest, err := readUntil(c, "\r\n\r\n", maxConnectHeader)
	if err != nil {
		return "", nil, err
	}
	line, _, _ := strings.Cut(string(hdr), "\r\n")
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "CONNECT" || !strings.HasPrefix(f[2], "HTTP/") {
		return "", nil, fmt.Errorf("benchmarks: not a CONNECT request: %q", line)
	}
	return f[1], rest, nil
}

// readUntil reads from c until delim has arrived and returns what came up
// to and including it, and any bytes after it. It reads in as few calls as
// the peer's writes allow, never a byte at a time.
func readUntil(c net.Conn, delim string, limit int) (head, rest []byte, err error) {
	buf := make([]byte, 0, 256)
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= limit {
				return nil, nil, fmt.Errorf("no %q in the first %d bytes", delim, limit)
			}
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if i := bytes.Index(buf, []byte(delim)); i >= 0 {
			return buf[:i+len(delim)], buf[i+len(delim):], nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading: %w (after %q)", err, buf)
		}
	}
}

// withPrefix returns c, reading rest first if there is any.
func withPrefix(c net.Conn, rest []byte) net.Conn {
	if len(rest) == 0 {
		return c
	}
	return &prefixConn{Conn: c, rest: bytes.Clone(rest)}
}
