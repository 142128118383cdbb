package mux

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// transport makes a connected pair of connections: a is the client's end.
type transport struct {
	name string
	pair func(tb testing.TB) (a, b net.Conn)
}

var transports = []transport{
	{"pipe", pipePair},
	{"tcp", tcpPair},
	{"tls", tlsPair},
}

func pipePair(tb testing.TB) (net.Conn, net.Conn) { return net.Pipe() }

func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			tb.Error(err)
		}
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		tb.FailNow()
	}
	return a, b
}

func tlsPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ra, rb := tcpPair(tb)
	cert := testCert(tb)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	a := tls.Client(ra, &tls.Config{RootCAs: pool, ServerName: "mux.test", MinVersion: tls.VersionTLS13})
	b := tls.Server(rb, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	errc := make(chan error, 1)
	go func() { errc <- b.Handshake() }()
	if err := a.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	return a, b
}

var (
	certOnce sync.Once
	certVal  tls.Certificate
	certErr  error
)

// testCert returns a self-signed certificate for "mux.test", made once.
func testCert(tb testing.TB) tls.Certificate {
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			certErr = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			Subject:      pkix.Name{CommonName: "mux.test"},
			DNSNames:     []string{"mux.test"},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			IsCA:         true,
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},

			BasicConstraintsValid: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			certErr = err
			return
		}
		leaf, err := x509.ParseCertificate(der)
		certVal, certErr = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, err
	})
	if certErr != nil {
		tb.Fatal(certErr)
	}
	return certVal
}

// sessions starts a client and a server session over tr, closed at cleanup.
func sessions(tb testing.TB, tr transport, ccfg, scfg *Config) (client, server *Session) {
	tb.Helper()
	a, b := tr.pair(tb)
	return sessionsOn(tb, a, b, ccfg, scfg)
}

// sessionsOn starts a client session on a and a server session on b,
// closed at cleanup.
func sessionsOn(tb testing.TB, a, b net.Conn, ccfg, scfg *Config) (client, server *Session) {
	tb.Helper()
	client, err := Client(a, ccfg)
	if err != nil {
		tb.Fatal(err)
	}
	server, err = Server(b, scfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// forEachTransport runs f as a subtest over each transport.
func forEachTransport(t *testing.T, f func(t *testing.T, tr transport)) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { f(t, tr) })
	}
}

// ctxT returns a context that ends with the test or after d.
func ctxT(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// openAccept opens a stream on a and accepts it on b.
func openAccept(tb testing.TB, a, b *Session) (*Stream, *Stream) {
	tb.Helper()
	ctx := ctxT(tb, 10*time.Second)
	sa, err := a.Open(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	sb, err := b.Accept(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return sa, sb
}

// eventually polls cond until it holds or d passes.
func eventually(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// goroutines counts goroutines, after letting finished ones exit.
func goroutines() int {
	runtime.Gosched()
	return runtime.NumGoroutine()
}
