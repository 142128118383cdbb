package e2e

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// targetConnTimeout bounds every connection a target serves.
const targetConnTimeout = 2 * time.Minute

// helloBody is what the HTTP target answers on /hello.
const helloBody = "hello from the target behind the tunnel\n"

// targets are the in-cluster services the tests reach through the tunnel.
// They run in the test process on 127.0.0.1, the address of node-a.
type targets struct {
	echo   string // echoes every byte; on EOF half-closes its side
	sink   string // reads an 8-byte length and that many bytes; answers their SHA-256
	source string // reads an 8-byte length; sends that many bytes and then their SHA-256
	http   string // HTTP server: /hello
	closed string // a port nobody listens on
}

// startTargets starts every target and stops them in cleanup.
func startTargets(t *testing.T) *targets {
	t.Helper()
	tg := &targets{
		echo:   serveTCP(t, "echo", serveEcho),
		sink:   serveTCP(t, "sink", serveSink),
		source: serveTCP(t, "source", serveSource),
		http:   serveHTTP(t),
		closed: closedPort(t),
	}
	return tg
}

// serveTCP runs handle for every connection accepted on 127.0.0.1:0. Cleanup
// closes the listener and the open connections and waits for the handlers.
func serveTCP(t *testing.T, name string, handle func(*net.TCPConn) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("target %s: listen: %v", name, err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				_ = c.SetDeadline(time.Now().Add(targetConnTimeout))
				if err := handle(c.(*net.TCPConn)); err != nil && !errors.Is(err, net.ErrClosed) {
					t.Logf("target %s: %v: %v", name, c.RemoteAddr(), err)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// serveEcho copies everything back and half-closes when the peer does.
func serveEcho(c *net.TCPConn) error {
	if _, err := io.Copy(c, c); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	return c.CloseWrite()
}

// serveSink answers the SHA-256 of a length-prefixed upload.
func serveSink(c *net.TCPConn) error {
	var n uint64
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		return fmt.Errorf("sink: length: %w", err)
	}
	h := sha256.New()
	got, err := io.CopyN(h, c, int64(n))
	if err != nil {
		return fmt.Errorf("sink: read %d of %d bytes: %w", got, n, err)
	}
	if _, err := c.Write(h.Sum(nil)); err != nil {
		return fmt.Errorf("sink: digest: %w", err)
	}
	return nil
}

// serveSource sends the requested number of pseudo-random bytes and then
// their SHA-256.
func serveSource(c *net.TCPConn) error {
	var n uint64
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		return fmt.Errorf("source: length: %w", err)
	}
	h := sha256.New()
	src := io.LimitReader(rand.NewChaCha8(randomSeed()), int64(n))
	if _, err := io.Copy(io.MultiWriter(c, h), src); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if _, err := c.Write(h.Sum(nil)); err != nil {
		return fmt.Errorf("source: digest: %w", err)
	}
	return nil
}

// serveHTTP starts an HTTP server on 127.0.0.1:0.
func serveHTTP(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Target-Saw-Host", r.Host)
		io.WriteString(w, helloBody)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// closedPort returns a loopback address on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("closed port: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// randomSeed returns a fresh ChaCha8 seed.
func randomSeed() [32]byte {
	var seed [32]byte
	for i := 0; i < len(seed); i += 8 {
		binary.LittleEndian.PutUint64(seed[i:], rand.Uint64())
	}
	return seed
}
