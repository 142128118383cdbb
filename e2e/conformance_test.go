package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Bounds of the conformance checks.
const (
	dialTimeout     = 15 * time.Second // one egress dial, CONNECT response included
	failFastTimeout = 5 * time.Second  // a dial the server must refuse at once
	ioTimeout       = 60 * time.Second // one exchange of up to a few MiB
	bulkTimeout     = 3 * time.Minute  // one 64 MiB transfer
	bulkSize        = 64 << 20
)

// TestEgressSelectorConformance runs tunnel-server and tunnel-agent as
// processes and dials through them with the real kube-apiserver egress
// selector, once per frontend transport.
func TestEgressSelectorConformance(t *testing.T) {
	tg := startTargets(t)
	tn := startTunnel(t, tg.echo)

	t.Run("HTTPConnect-UDS", func(t *testing.T) {
		path := writeEgressConfig(t, deployConfig(t, "http-connect-uds.yaml",
			"/etc/kubernetes/tunnel/tunnel.sock", tn.udsPath))
		runConformance(t, loadClusterDialer(t, path), tg)
	})
	t.Run("HTTPConnect-TCP-mTLS", func(t *testing.T) {
		path := writeEgressConfig(t, deployConfig(t, "http-connect-tcp.yaml",
			"https://127.0.0.1:8131", "https://"+tn.frontendAddr,
			"/etc/kubernetes/tunnel/ca.crt", tn.certFile("ca.crt"),
			"/etc/kubernetes/tunnel/client.key", tn.certFile("client.key"),
			"/etc/kubernetes/tunnel/client.crt", tn.certFile("client.crt")))
		runConformance(t, loadClusterDialer(t, path), tg)
		t.Run("client-cert-required", func(t *testing.T) { testClientCertRequired(t, tn, tg) })
	})
}

// runConformance runs every check through one egress dialer.
func runConformance(t *testing.T, dial dialFunc, tg *targets) {
	t.Run("echo", func(t *testing.T) { testEcho(t, dial, tg) })
	t.Run("concurrent", func(t *testing.T) { testConcurrent(t, dial, tg) })
	t.Run("half-close", func(t *testing.T) { testHalfClose(t, dial, tg) })
	t.Run("http-get", func(t *testing.T) { testHTTPGet(t, dial, tg) })
	t.Run("upload-64MiB", func(t *testing.T) { testUpload(t, dial, tg) })
	t.Run("download-64MiB", func(t *testing.T) { testDownload(t, dial, tg) })
	t.Run("node-name", func(t *testing.T) { testNodeName(t, dial, tg) })
	t.Run("no-agent", func(t *testing.T) { testNoAgent(t, dial) })
	t.Run("connection-refused", func(t *testing.T) { testRefused(t, dial, tg) })
}

// newRand returns a seeded generator and logs the seed so a failure can be
// replayed.
func newRand(t *testing.T) *rand.ChaCha8 {
	seed := randomSeed()
	t.Logf("random seed %x", seed)
	return rand.NewChaCha8(seed)
}

// randomBytes returns n bytes from r.
func randomBytes(r *rand.ChaCha8, n int) []byte {
	b := make([]byte, n)
	_, _ = r.Read(b)
	return b
}

// testEcho checks that bytes of several sizes come back exactly.
func testEcho(t *testing.T, dial dialFunc, tg *targets) {
	r := newRand(t)
	for _, n := range []int{1, 2, 7, 100, 1400, 4095, 4096, 4097, 16383, 16384, 16385,
		65535, 65536, 65537, 256<<10 + 1, 1<<20 - 1, 4<<20 + 3} {
		c := mustDial(t, dial, tg.echo)
		if err := echoRoundTrip(c, randomBytes(r, n)); err != nil {
			t.Errorf("%d bytes: %v", n, err)
		}
		c.Close()
	}
}

// echoRoundTrip writes payload while reading the same number of bytes back
// and compares every byte.
func echoRoundTrip(c net.Conn, payload []byte) error {
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		werr <- err
	}()
	got := make([]byte, len(payload))
	n, rerr := io.ReadFull(c, got)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read %d of %d bytes back: %w", n, len(payload), rerr)
	}
	return compareBytes(got, payload)
}

// compareBytes reports the first byte where got differs from want.
func compareBytes(got, want []byte) error {
	if bytes.Equal(got, want) {
		return nil
	}
	if len(got) != len(want) {
		return fmt.Errorf("got %d bytes, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("byte %d of %d differs: got %#02x, want %#02x", i, len(want), got[i], want[i])
		}
	}
	return nil
}

// testConcurrent checks that many tunneled connections run at once without
// mixing their bytes.
func testConcurrent(t *testing.T, dial dialFunc, tg *targets) {
	const conns, size = 16, 512 << 10
	r := newRand(t)
	payloads := make([][]byte, conns)
	for i := range payloads {
		payloads[i] = randomBytes(r, size)
	}
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i := range conns {
		wg.Go(func() {
			c, err := dialBounded(dial, tg.echo, dialTimeout)
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			errs[i] = echoRoundTrip(c, payloads[i])
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("connection %d: %v", i, err)
		}
	}
}

// closeWriter is a connection whose write side can be closed on its own
// (*net.UnixConn for the unix socket, *tls.Conn for TCP + mTLS).
type closeWriter interface {
	CloseWrite() error
}

// testHalfClose checks that closing the write side reaches the target as
// EOF while the tunnel still carries the target's answer, and that the
// target's own EOF reaches the client.
func testHalfClose(t *testing.T, dial dialFunc, tg *targets) {
	payload := randomBytes(newRand(t), 1<<20+5)
	c := mustDial(t, dial, tg.echo)
	cw, ok := c.(closeWriter)
	if !ok {
		t.Fatalf("egress connection %T cannot half-close", c)
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = cw.CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		t.Fatalf("write and CloseWrite: %v", err)
	}
	if rerr != nil {
		t.Fatalf("read to EOF after CloseWrite: got %d of %d bytes: %v", len(got), len(payload), rerr)
	}
	if err := compareBytes(got, payload); err != nil {
		t.Fatal(err)
	}
}

// testHTTPGet sends HTTP requests through the egress dialer, as the API
// server's proxy does, and checks that the tunneled connection is reused.
func testHTTPGet(t *testing.T, dial dialFunc, tg *targets) {
	var dials atomic.Int32
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return dialBounded(dial, addr, dialTimeout)
		},
		ResponseHeaderTimeout: ioTimeout,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: ioTimeout}
	const requests = 3
	for i := range requests {
		res, err := client.Get("http://" + tg.http + "/hello")
		if err != nil {
			t.Fatalf("GET %d: %v", i, err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatalf("GET %d: body: %v", i, err)
		}
		if res.StatusCode != http.StatusOK || string(body) != helloBody {
			t.Fatalf("GET %d: %s %q, want 200 %q", i, res.Status, body, helloBody)
		}
		if h := res.Header.Get("X-Target-Saw-Host"); h != tg.http {
			t.Errorf("GET %d: target saw Host %q, want %q", i, h, tg.http)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d requests took %d tunneled connections, want 1 (keep-alive through the tunnel)", requests, n)
	}
}

// testUpload sends 64 MiB to the sink and compares the SHA-256 the target
// computed with the one the client computed; then the target closes and the
// client must see EOF.
func testUpload(t *testing.T, dial dialFunc, tg *targets) {
	c := mustDial(t, dial, tg.sink)
	_ = c.SetDeadline(time.Now().Add(bulkTimeout))
	if err := binary.Write(c, binary.BigEndian, uint64(bulkSize)); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	start := time.Now()
	n, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(newRand(t), bulkSize))
	if err != nil {
		t.Fatalf("upload: wrote %d of %d bytes: %v", n, bulkSize, err)
	}
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the target's SHA-256: %v", err)
	}
	logRate(t, "upload", start)
	if want := h.Sum(nil); !bytes.Equal(got, want) {
		t.Fatalf("target received bytes with SHA-256 %x, client sent %x", got, want)
	}
	expectEOF(t, c)
}

// testDownload receives 64 MiB and the SHA-256 the target computed, and
// compares it with the SHA-256 of what arrived.
func testDownload(t *testing.T, dial dialFunc, tg *targets) {
	c := mustDial(t, dial, tg.source)
	_ = c.SetDeadline(time.Now().Add(bulkTimeout))
	if err := binary.Write(c, binary.BigEndian, uint64(bulkSize)); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	start := time.Now()
	if n, err := io.CopyN(h, c, bulkSize); err != nil {
		t.Fatalf("download: read %d of %d bytes: %v", n, bulkSize, err)
	}
	want := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, want); err != nil {
		t.Fatalf("reading the target's SHA-256: %v", err)
	}
	logRate(t, "download", start)
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		t.Fatalf("client received bytes with SHA-256 %x, target sent %x", got, want)
	}
	expectEOF(t, c)
}

// logRate logs the throughput of one bulk transfer.
func logRate(t *testing.T, what string, start time.Time) {
	d := time.Since(start)
	t.Logf("%s of %d MiB in %v (%.0f MiB/s)", what, bulkSize>>20, d.Round(time.Millisecond),
		float64(bulkSize>>20)/d.Seconds())
}

// expectEOF checks that the target's close reaches the client promptly.
func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("after the target closed: read %d bytes, %v; want io.EOF", n, err)
	}
}

// testNodeName dials NODE_NAME:port, which the agent dials as NODE_IP:port.
func testNodeName(t *testing.T, dial dialFunc, tg *targets) {
	_, port, err := net.SplitHostPort(tg.echo)
	if err != nil {
		t.Fatal(err)
	}
	c := mustDial(t, dial, net.JoinHostPort(nodeName, port))
	if err := echoRoundTrip(c, randomBytes(newRand(t), 64<<10)); err != nil {
		t.Fatal(err)
	}
}

// testNoAgent checks the fast, explicit 502 for destinations no agent serves;
// the egress selector surfaces the status line, so the reason must be there.
func testNoAgent(t *testing.T, dial dialFunc) {
	for _, host := range []string{absentNodeIP, absentNodeName} {
		addr := net.JoinHostPort(host, "10250")
		expectDialError(t, dial, addr, "code 502", "no agent for "+host)
	}
}

// testRefused checks that the agent's dial failure comes back as a 502 with
// the reason.
func testRefused(t *testing.T, dial dialFunc, tg *targets) {
	expectDialError(t, dial, tg.closed, "code 502", "connection refused")
}

// expectDialError dials addr and wants an error that quickly arrives and
// contains every one of want.
func expectDialError(t *testing.T, dial dialFunc, addr string, want ...string) {
	t.Helper()
	start := time.Now()
	c, err := dialBounded(dial, addr, failFastTimeout)
	if err == nil {
		c.Close()
		t.Errorf("dial %s succeeded, want an error containing %q", addr, want)
		return
	}
	if errors.Is(err, errNoCONNECTResponse) {
		t.Errorf("%v; want an answer at once with %q", err, want)
		return
	}
	t.Logf("dial %s failed after %v: %v", addr, time.Since(start).Round(time.Millisecond), err)
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("dial %s: error %q does not contain %q", addr, err, w)
		}
	}
}

// testClientCertRequired checks that the TCP frontend tunnels nothing for a
// client without a certificate.
func testClientCertRequired(t *testing.T, tn *tunnel, tg *targets) {
	pem, err := os.ReadFile(tn.certFile("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("ca.crt holds no certificate")
	}
	d := &net.Dialer{Timeout: dialTimeout}
	c, err := tls.DialWithDialer(d, "tcp", tn.frontendAddr, &tls.Config{RootCAs: roots})
	if err != nil {
		t.Logf("handshake without a client certificate refused: %v", err)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", tg.echo)
	res, err := io.ReadAll(c)
	if bytes.HasPrefix(res, []byte("HTTP/1.1 200")) {
		t.Fatalf("frontend tunneled for a client without a certificate: %q", res)
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		t.Fatalf("frontend neither answered nor closed within %v", ioTimeout)
	}
	t.Logf("connection without a client certificate: answer %q, then %v", res, err)
}
