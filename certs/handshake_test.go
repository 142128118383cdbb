package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// handshakeResult is what the server side of a test handshake saw.
type handshakeResult struct {
	state tls.ConnectionState
	err   error
}

// serveOnce accepts one TLS 1.3 connection requiring a client certificate
// from pool, completes the handshake and reports what it saw.
func serveOnce(t *testing.T, ln net.Listener, cert tls.Certificate, pool *x509.CertPool) <-chan handshakeResult {
	t.Helper()
	done := make(chan handshakeResult, 1)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- handshakeResult{err: err}
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = tc.HandshakeContext(ctx)
		done <- handshakeResult{state: tc.ConnectionState(), err: err}
	}()
	return done
}

// dialAgent dials ln as an agent presenting cert and trusting pool.
func dialAgent(t *testing.T, ln net.Listener, cert tls.Certificate, pool *x509.CertPool) error {
	t.Helper()
	d := tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		Config: &tls.Config{
			Certificates: []tls.Certificate{cert},
			RootCAs:      pool,
			ServerName:   "localhost",
			MinVersion:   tls.VersionTLS13,
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	// TLS 1.3 clients finish before the server has checked their
	// certificate; a read makes the client wait for the server's verdict.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	conn.Read(make([]byte, 1))
	return conn.Close()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestMutualTLSHandshake(t *testing.T) {
	fx := generate(t)
	tests := []struct {
		name      string
		cert      tls.Certificate
		wantNames []string
		wantIP    string
	}{
		{"agent node-a", fx.agents["node-a"], []string{"node-a"}, "10.0.0.1"},
		{"agent node-b", fx.agents["node-b.example"], []string{"node-b.example"}, "10.0.0.2"},
		{"frontend client proves no node", fx.client, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen(t)
			done := serveOnce(t, ln, fx.server, fx.pool)
			if err := dialAgent(t, ln, tt.cert, fx.pool); err != nil {
				t.Fatalf("agent handshake: %v", err)
			}
			res := <-done
			if res.err != nil {
				t.Fatalf("server handshake: %v", res.err)
			}
			if res.state.Version != tls.VersionTLS13 {
				t.Errorf("version %x, want TLS 1.3", res.state.Version)
			}
			if len(res.state.VerifiedChains) == 0 {
				t.Fatal("server has no verified chain for the client")
			}
			peer := res.state.PeerCertificates[0]
			if got := NodeNames(peer); !slices.Equal(got, tt.wantNames) {
				t.Errorf("server sees node names %q, want %q", got, tt.wantNames)
			}
			if tt.wantIP != "" && !ProvesIP(peer, netip.MustParseAddr(tt.wantIP)) {
				t.Errorf("peer does not prove %s", tt.wantIP)
			}
		})
	}
}

func TestMutualTLSRejectsForeignAgent(t *testing.T) {
	fx, other := generate(t), generate(t)
	ln := listen(t)
	done := serveOnce(t, ln, fx.server, fx.pool)
	dialAgent(t, ln, other.agents["node-a"], fx.pool) // its error depends on timing
	if res := <-done; res.err == nil {
		t.Fatal("server accepted an agent signed by another CA")
	}
}
