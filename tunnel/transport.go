package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/tunnel/mux"
)

// Session is one authenticated agent↔server connection that carries many
// streams. The TLS transport (a mux session over TLS 1.3) implements it;
// other transports (SSH) plug in behind the same interface.
type Session interface {
	// Open starts a new stream to the peer and sends first on it, in the
	// same write as the open where the transport allows (a dial in one
	// write).
	Open(ctx context.Context, first []byte) (net.Conn, error)
	// Accept waits for the peer to open a stream, or for ctx to end.
	Accept(ctx context.Context) (net.Conn, error)
	// Close ends the session and every stream on it at once.
	Close() error
	// Done is closed when the session has ended for any reason.
	Done() <-chan struct{}
	// Peer is the identity the peer's credential proves.
	Peer() Identity
	// Ping measures the round-trip time to the peer. If no answer arrives
	// before ctx ends, the peer is taken for dead: Ping closes the session
	// at once, without waiting to say goodbye on a network that may be
	// dropping everything, and returns an error (keepalive.go).
	Ping(ctx context.Context) (time.Duration, error)
}

// Identity is what a peer's credential proves, independent of what the peer
// says about itself.
type Identity struct {
	// Transport names the transport that proved it, e.g. "tls".
	Transport string
	// Subject is a display name for logs (the certificate subject).
	Subject string
	// Nodes are the node names the credential proves.
	Nodes []string
	// IPs are the addresses the credential proves.
	IPs []netip.Addr
}

// provesNode reports whether the identity proves node name.
func (id Identity) provesNode(name string) bool {
	for _, n := range id.Nodes {
		if n == name {
			return true
		}
	}
	return false
}

// provesIP reports whether the identity proves ip.
func (id Identity) provesIP(ip netip.Addr) bool {
	for _, a := range id.IPs {
		if a == ip.Unmap() {
			return true
		}
	}
	return false
}

// identityFromCert derives an Identity from a verified client certificate.
func identityFromCert(cert *x509.Certificate) Identity {
	id := Identity{Transport: "tls", Subject: cert.Subject.String(), Nodes: certs.NodeNames(cert)}
	for _, ip := range cert.IPAddresses {
		if a, ok := netip.AddrFromSlice(ip); ok {
			id.IPs = append(id.IPs, a.Unmap())
		}
	}
	return id
}

// sessionConfig returns the session settings of a TLS agent connection
// (package mux; DESIGN.md section 5 covers the windows): keepalive.go
// pings with its own interval and timeout through Session.Ping, so writes
// may take as long as a ping may wait before the session is given up.
func sessionConfig(pingTimeout time.Duration, log *slog.Logger) *mux.Config {
	c := mux.DefaultConfig()
	c.WriteTimeout = max(c.WriteTimeout, pingTimeout+time.Second)
	c.Logger = log
	return c
}

// agentSessionConfig is the agent's side: the server opens a stream per
// dial, so the backlog is large and SYNs from the server (which the agent
// has authenticated) may come as fast as its dial rate.
func agentSessionConfig(pingTimeout time.Duration, log *slog.Logger) *mux.Config {
	c := sessionConfig(pingTimeout, log)
	c.AcceptBacklog = agentAcceptBacklog
	c.StreamLimit = mux.FloodLimit{Rate: 1e6, Burst: 1 << 20}
	return c
}

// agentAcceptBacklog bounds the dials an agent has been sent and not yet
// taken up; the server opens at most this many before their ACKs return.
const agentAcceptBacklog = 1024

// serverAcceptBacklog bounds the streams an agent may open that the server
// has not accepted. The server accepts only the control stream, so an
// agent that opens more can pin at most this many initial windows of
// memory; the session resets the rest.
const serverAcceptBacklog = 4

// muxSession adapts a mux session to Session.
type muxSession struct {
	s    *mux.Session
	raw  net.Conn // the TCP connection under TLS, closed first when the peer is dead
	peer Identity
}

func (m *muxSession) Open(ctx context.Context, first []byte) (net.Conn, error) {
	return m.s.OpenWith(ctx, first)
}

func (m *muxSession) Accept(ctx context.Context) (net.Conn, error) {
	st, err := m.s.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (m *muxSession) Close() error          { return m.s.Close() }
func (m *muxSession) Done() <-chan struct{} { return m.s.Done() }
func (m *muxSession) Peer() Identity        { return m.peer }

// Ping measures the round trip; a ping that fails or times out aborts the
// session (keepalive.go).
func (m *muxSession) Ping(ctx context.Context) (time.Duration, error) {
	rtt, err := m.s.Ping(ctx)
	if err != nil {
		m.abort()
		if ctx.Err() != nil {
			return 0, context.Cause(ctx)
		}
	}
	return rtt, err
}

// abort closes a session whose peer is gone. Closing the TCP connection
// first keeps TLS from waiting to send its close alert into a dead network.
func (m *muxSession) abort() {
	m.raw.Close()
	m.s.Close()
}

// dialTLS connects an agent to the server at addr: TCP, TLS 1.3 with the
// agent's client certificate, then a session (mcfg) on which the server
// opens streams.
func dialTLS(ctx context.Context, addr string, cfg *tls.Config, mcfg *mux.Config) (Session, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := newBatchedTLS(raw, cfg, tls.Client)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return nil, fmt.Errorf("tls handshake with %s: %w (the server closed the connection before TLS: it sheds connections beyond its --agent-accept-rate or --max-agent-handshakes; a later try gets in)", addr, err)
		}
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	s, err := mux.Client(conn, mcfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	peer := Identity{Transport: "tls"}
	if pc := conn.ConnectionState().PeerCertificates; len(pc) > 0 {
		peer = identityFromCert(pc[0])
	}
	return &muxSession{s: s, raw: raw, peer: peer}, nil
}

// acceptTLS completes the server side of an agent connection: the TLS
// handshake (which verifies the client certificate) within ctx, then a
// session (mcfg; limits.go sets its windows).
func acceptTLS(ctx context.Context, raw net.Conn, cfg *tls.Config, mcfg *mux.Config) (Session, error) {
	conn := newBatchedTLS(raw, cfg, tls.Server)
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	leaf, err := verifiedLeaf(conn.ConnectionState())
	if err != nil {
		return nil, err
	}
	s, err := mux.Server(conn, mcfg)
	if err != nil {
		return nil, err
	}
	return &muxSession{s: s, raw: raw, peer: identityFromCert(leaf)}, nil
}

// strictAgentTLS returns a copy of cfg that forces what the agent port
// promises: TLS 1.3 and a client certificate verified against ClientCAs,
// also in every configuration GetConfigForClient returns.
func strictAgentTLS(cfg *tls.Config) *tls.Config {
	t := cfg.Clone()
	t.MinVersion = tls.VersionTLS13
	t.ClientAuth = tls.RequireAndVerifyClientCert
	if get := cfg.GetConfigForClient; get != nil {
		t.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if c == nil || err != nil {
				return c, err
			}
			c = c.Clone()
			c.MinVersion = tls.VersionTLS13
			c.ClientAuth = tls.RequireAndVerifyClientCert
			return c, nil
		}
	}
	return t
}

// verifiedLeaf returns the agent's certificate from a finished handshake,
// and only if crypto/tls verified its chain: identity is read from nothing
// else, whatever the TLS configuration said (strictAgentTLS).
func verifiedLeaf(cs tls.ConnectionState) (*x509.Certificate, error) {
	switch {
	case cs.Version != tls.VersionTLS13:
		return nil, errors.New("tls handshake: not TLS 1.3")
	case len(cs.PeerCertificates) == 0:
		return nil, errors.New("tls handshake: no client certificate")
	case len(cs.VerifiedChains) == 0:
		return nil, errors.New("tls handshake: client certificate not verified against the agent CA")
	}
	return cs.VerifiedChains[0][0], nil
}
