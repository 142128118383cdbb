package mux

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestCloseUnderLoad closes a session with 10,000 streams, each with a
// goroutine blocked in Read, and 1,000 goroutines blocked in Write with their
// send window used up, while two goroutines spin on the CPU. Every call must
// return within a second of Close, and the goroutines must all exit.
//
// A second is the target on a loaded two-core machine; on one loaded more
// (CI runs this under -race, beside a CPU hog and other test binaries) the
// machine itself may need longer just to run 11,000 woken goroutines. So the
// test also times that: as many goroutines blocked on a plain channel, woken
// by closing it, under the same spinning goroutines, just before Close. The
// session may take longer than a second only if it stays within three times
// that reference; ten under the race detector, where each of the wake
// path's locks and channel operations costs more than the bare receive's
// (measured beside `stress-ng --cpu 2`: 2-2.5 times the reference without
// it, 3.5-5 times with it). A Close that spins or waits on its streams one
// at a time (hashicorp/yamux took minutes here) fails either way.
func TestCloseUnderLoad(t *testing.T) {
	readers, writers := 10000, 1000
	if testing.Short() {
		readers, writers = 1000, 100
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := DefaultConfig()
	cfg.AcceptBacklog = readers + writers
	cfg.StreamLimit = FloodLimit{Rate: 1e6, Burst: 1e6}
	p := newRawPeer(t, cfg, false)
	defer p.finish()
	// The raw peer opens the streams and swallows everything sent back
	// without granting window.
	go io.Copy(io.Discard, bufio.NewReader(p.conn))
	var syns []byte
	for i := range readers + writers {
		syns = append(syns, frames(1, typeWindowUpdate, flagSYN, uint32(2*i+1), 0, nil)...)
	}
	if err := p.send(syns); err != nil {
		t.Fatal(err)
	}
	streams := make([]*Stream, readers+writers)
	for i := range streams {
		st, err := p.sess.Accept(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		streams[i] = st
	}

	var returned atomic.Int64
	var wg sync.WaitGroup
	record := func(err error) {
		if !errors.Is(err, ErrSessionClosed) {
			t.Errorf("call returned %v; want ErrSessionClosed", err)
		}
		returned.Add(1)
	}
	for _, st := range streams[:readers] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := st.Read(make([]byte, 1))
			record(err)
		}()
	}
	big := make([]byte, initialWindow+1)
	for _, st := range streams[readers:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := st.Write(big)
			record(err)
		}()
	}
	eventually(t, 60*time.Second, "writers to use up their windows", func() bool {
		for _, st := range streams[readers:] {
			st.mu.Lock()
			w := st.sendWin
			st.mu.Unlock()
			if w != 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(50 * time.Millisecond) // let the readers reach their select

	stop := make(chan struct{})
	var hogs sync.WaitGroup
	for range 2 {
		hogs.Add(1)
		go func() {
			defer hogs.Done()
			for !closed(stop) {
			}
		}()
	}
	ref := wakeReference(readers+writers, record)
	returned.Store(0)
	start := time.Now()
	p.sess.Close()
	closeTook := time.Since(start)
	wg.Wait()
	all := time.Since(start)
	close(stop)
	hogs.Wait()
	t.Logf("Close took %v; all %d calls returned after %v; %d goroutines woken from a channel took %v (GOMAXPROCS %d)",
		closeTook, returned.Load(), all, readers+writers, ref, runtime.GOMAXPROCS(0))
	allowance := 3
	if raceEnabled {
		allowance = 10
	}
	if all > time.Second && all > time.Duration(allowance)*ref {
		t.Fatalf("the calls returned %v after Close: over a second, and over %d times the %v the machine took to wake as many goroutines", all, allowance, ref)
	}
	if _, err := p.sess.Accept(context.Background()); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

// wakeReference times how long n goroutines blocked on a channel take to
// return, each calling record, once the channel closes: what waking that
// many goroutines costs on this machine at this moment.
func wakeReference(n int, record func(error)) time.Duration {
	release := make(chan struct{})
	var wg sync.WaitGroup
	var started sync.WaitGroup
	for range n {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			<-release
			record(ErrSessionClosed)
		}()
	}
	started.Wait()
	time.Sleep(50 * time.Millisecond) // let them reach the receive
	start := time.Now()
	close(release)
	wg.Wait()
	return time.Since(start)
}

// TestStuckConnection fills a TLS connection whose peer never reads, so
// that writes block inside TLS. With a short WriteTimeout the session must
// end with ErrWriteTimeout; with the default one, Close must still return
// at once. Neither may wait for TLS's close alert (up to 5 s).
func TestStuckConnection(t *testing.T) {
	for _, timeout := range []time.Duration{300 * time.Millisecond, 0} {
		t.Run(fmt.Sprint(timeout), func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			a, b := tlsPair(t) // b is never read
			defer b.Close()
			cfg := DefaultConfig()
			if timeout > 0 {
				cfg.WriteTimeout = timeout
			}
			s, err := Client(a, cfg)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var blocked atomic.Int64
			// 64 windows of 256 KiB: more than loopback buffers hold. All
			// are opened before any writes, so that no SYN waits behind a
			// stuck write (on a loaded machine the first writers fill the
			// connection before the loop is done).
			streams := make([]*Stream, 64)
			for i := range streams {
				if streams[i], err = s.Open(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			for _, st := range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					blocked.Add(1)
					st.Write(make([]byte, initialWindow))
				}()
			}
			eventually(t, 10*time.Second, "writers to start", func() bool { return blocked.Load() == 64 })
			if timeout > 0 {
				select {
				case <-s.Done():
				case <-time.After(30 * time.Second):
					t.Fatal("session outlived its write timeout")
				}
				if err := s.Err(); !errors.Is(err, ErrWriteTimeout) {
					t.Fatalf("session ended with %v; want ErrWriteTimeout", err)
				}
			} else {
				eventually(t, 10*time.Second, "a write to block in the connection", func() bool {
					s.w.mu.Lock()
					defer s.w.mu.Unlock()
					return s.w.writing && s.w.pending != nil
				})
			}
			start := time.Now()
			s.Close()
			wg.Wait()
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("Close and the blocked writes took %v", d)
			}
		})
	}
}

// stallConn is a connection whose Writes, once stalled, block until their
// write deadline passes or the connection is closed: a peer that stopped
// reading, made exact.
type stallConn struct {
	net.Conn
	stalled  atomic.Bool
	mu       sync.Mutex
	deadline time.Time
	once     sync.Once
	closed   chan struct{}
}

func (c *stallConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *stallConn) Write(p []byte) (int, error) {
	if !c.stalled.Load() {
		return c.Conn.Write(p)
	}
	c.mu.Lock()
	d := c.deadline
	c.mu.Unlock()
	var expired <-chan time.Time
	if !d.IsZero() {
		expired = time.After(time.Until(d))
	}
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	}
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestTLSCloseAfterWriteTimeout checks that a session ended by a write
// timeout closes the connection under TLS first, so that TLS does not spend
// up to 5 s trying to write its close alert into the stuck connection.
func TestTLSCloseAfterWriteTimeout(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ra, rb := tcpPair(t)
	sc := &stallConn{Conn: ra, closed: make(chan struct{})}
	cert := testCert(t)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	a := tls.Client(sc, &tls.Config{RootCAs: pool, ServerName: "mux.test", MinVersion: tls.VersionTLS13})
	b := tls.Server(rb, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	defer b.Close()
	go b.Handshake()
	if err := a.Handshake(); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, b)
	cfg := DefaultConfig()
	cfg.WriteTimeout = 200 * time.Millisecond
	s, err := Client(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sc.stalled.Store(true)
	start := time.Now()
	st, err := s.Open(context.Background()) // the SYN's write stalls
	if err == nil {
		_, err = st.Write([]byte("x"))
	}
	if !errors.Is(err, ErrWriteTimeout) {
		t.Fatalf("write into a stalled connection: %v", err)
	}
	s.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a write timeout of 200ms and Close took %v", d)
	}
}

// gateConn holds each Write, once gated, until the gate opens: a write in
// flight that takes as long as the test wants.
type gateConn struct {
	net.Conn
	gated   atomic.Bool
	writing chan struct{} // receives once a gated Write is held
	gate    chan struct{}
}

func (c *gateConn) Write(p []byte) (int, error) {
	if c.gated.Load() {
		c.writing <- struct{}{}
		<-c.gate
	}
	return c.Conn.Write(p)
}

// TestCloseFlushesQueuedFrames closes a session while a write is in flight
// and another stream's FIN waits behind it: the FIN is a frame the session
// accepted, so Close writes it after the write in flight, and the peer reads
// EOF on that stream — not the session's end. A tunnel that moves to
// another agent (tunnel/move.go) ends its old stream with that FIN just
// before the old agent closes its session.
func TestCloseFlushesQueuedFrames(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, b := tcpPair(t)
	gc := &gateConn{Conn: a, writing: make(chan struct{}, 1), gate: make(chan struct{})}
	client, err := Client(gc, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(b, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	busy, busyPeer := openAccept(t, client, server)
	quiet, quietPeer := openAccept(t, client, server)
	if _, err := busy.Write([]byte("x")); err != nil { // the SYNs are out
		t.Fatal(err)
	}

	gc.gated.Store(true)
	data := make([]byte, 64<<10)
	go busy.Write(data)
	<-gc.writing // the write is in flight, held
	if err := quiet.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { client.Close(); close(closed) }()
	time.Sleep(20 * time.Millisecond) // Close waits for the write in flight
	gc.gated.Store(false)
	close(gc.gate)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}

	if n, err := io.ReadFull(busyPeer, make([]byte, 1+len(data))); err != nil {
		t.Fatalf("the write in flight: read %d bytes: %v", n, err)
	}
	if n, err := quietPeer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("the stream closed before the session: read %d, %v; want EOF", n, err)
	}
}
