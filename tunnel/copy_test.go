package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/tunnel/mux"
)

// scriptedReader returns the reads of its script in order, each as one
// Read, then EOF, and counts the Shrink calls the copy path makes.
type scriptedReader struct {
	data    []byte
	reads   []int
	maxBuf  int
	shrinks int
}

func (r *scriptedReader) Read(p []byte) (int, error) {
	if len(r.reads) == 0 {
		return 0, io.EOF
	}
	r.maxBuf = max(r.maxBuf, len(p))
	n := min(r.reads[0], len(p))
	if n == r.reads[0] {
		r.reads = r.reads[1:]
	} else {
		r.reads[0] -= n
	}
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func (r *scriptedReader) Shrink() { r.shrinks++ }

type byteCount struct{ n atomic.Int64 }

func (c *byteCount) Add(v float64) { c.n.Add(int64(v)) }

// TestCopyAdaptive checks that every byte arrives in order while reads move
// between the small and the large buffer, that bulk reads get the large
// buffer, and that quiet reads release the stream's receive buffer.
func TestCopyAdaptive(t *testing.T) {
	reads := []int{1, 64, smallBufSize, largeReadSize, largeReadSize, 5, smallBufSize - 1, 3 * largeReadSize, 7}
	total := 0
	for _, n := range reads {
		total += n
	}
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(rand.N(256))
	}
	src := &scriptedReader{data: data, reads: reads}
	var dst bytes.Buffer
	var count byteCount
	n, _, err := copyAdaptive(&dst, src, &count, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(total) || count.n.Load() != int64(total) || !bytes.Equal(dst.Bytes(), data) {
		t.Fatalf("copied %d (counted %d) of %d bytes; equal=%v", n, count.n.Load(), total, bytes.Equal(dst.Bytes(), data))
	}
	if src.maxBuf != largeReadSize {
		t.Errorf("largest read buffer %d, want %d during bulk reads", src.maxBuf, largeReadSize)
	}
	// Reads of 1, 64, 5, smallBufSize-1 and 7 bytes are quiet moments.
	if src.shrinks != 5 {
		t.Errorf("%d Shrink calls, want 5 (one per quiet read)", src.shrinks)
	}
}

// BenchmarkPipe measures the copy path alone between two loopback TCP
// connections: a client writes, pipe relays, a sink reads.
func BenchmarkPipe(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	dial := func() (net.Conn, net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		return c, s
	}
	client, in := dial()
	out, sink := dial()
	startPipe(nil, in, out, nil, nil, nil, func(bool) {})
	done := make(chan int64)
	go func() { n, _ := io.Copy(io.Discard, sink); done <- n }()

	chunk := make([]byte, 128<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := client.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	client.(*net.TCPConn).CloseWrite()
	if n := <-done; n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("sink read %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
	}
	client.Close()
	sink.Close()
}

// TestReadWaiters checks the buffer-free waits of the copy path on the
// connection types it meets: the wait returns once data arrives, consumes
// none of it, and returns at EOF too.
func TestReadWaiters(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	checkWaiter(t, "tcp", a, b)

	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	client, err := mux.Client(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := mux.Server(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	out, err := client.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	in, err := server.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkWaiter(t, "mux", out, &streamConn{Conn: in, agent: &agentConn{}})
}

// checkWaiter writes to w and waits on r's waiter.
func checkWaiter(t *testing.T, name string, w, r net.Conn) {
	wait := readWaiter(r)
	if wait == nil {
		t.Fatalf("%s: no read waiter", name)
	}
	done := make(chan error, 1)
	go func() { done <- wait() }()
	select {
	case err := <-done:
		t.Fatalf("%s: wait returned %v before any data was sent", name, err)
	case <-time.After(20 * time.Millisecond):
	}
	msg := []byte("hello, waiter")
	if _, err := w.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("%s: wait: %v", name, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("%s: after the wait read %q, %v; want %q", name, got, err, msg)
	}
	if cw, ok := w.(closeWriter); ok {
		cw.CloseWrite()
	} else {
		w.Close()
	}
	if err := wait(); err != nil && err != io.EOF {
		t.Fatalf("%s: wait at EOF: %v", name, err)
	}
	if n, err := r.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("%s: read after the wait at EOF: %d, %v; want EOF", name, n, err)
	}
}

// wrappedEOF is a reader whose input ends in failure: a session whose
// connection ended under a stream wraps io.EOF in its error.
type wrappedEOF struct{}

func (wrappedEOF) Read([]byte) (int, error) { return 0, fmt.Errorf("connection lost: %w", io.EOF) }

// TestCopyWrappedEOFIsAFailure: only io.EOF itself is a clean end, which
// half-closes; a wrapped one aborts both directions, so a tunnel whose agent
// died is not left half-open behind a client that keeps its side open.
func TestCopyWrappedEOFIsAFailure(t *testing.T) {
	if _, _, err := copyAdaptive(io.Discard, wrappedEOF{}, nil, nil, nil); err == nil {
		t.Fatal("a wrapped io.EOF ended the copy cleanly")
	}
	if _, _, err := copyAdaptive(io.Discard, strings.NewReader("x"), nil, nil, nil); err != nil {
		t.Fatalf("io.EOF: %v", err)
	}
}

// TestFastLaneUnderBackpressure: a session stream piped to a TCP socket
// whose reader is slow, so that the read loop's direct writes (the fast
// lane) meet a full socket and hand the rest to the copier, over and over;
// messages of every size arrive whole and in order, and the count holds.
func TestFastLaneUnderBackpressure(t *testing.T) {
	// Small socket buffers, set before connecting (shrinking them on an
	// open connection can stall TCP), so the socket is often full.
	small := func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 8<<10)
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<10)
		})
	}
	ln, err := (&net.ListenConfig{Control: small}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (net.Conn, net.Conn) {
		c, err := (&net.Dialer{Control: small}).Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	sc, ss := pair()
	a, b := streamPair(t, sc, ss)
	dst, reader := pair()
	var count byteCount
	piped := make(chan int64, 1)
	go func() { piped <- copyHalf(dst, b, &count) }()

	var sent bytes.Buffer
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		rng := rand.New(rand.NewPCG(1, 2))
		for range 400 {
			msg := make([]byte, []int{1, 64, 1500, 16 << 10, 100 << 10}[rng.IntN(5)])
			for i := range msg {
				msg[i] = byte(rng.Uint32())
			}
			sent.Write(msg)
			if _, err := a.Write(msg); err != nil {
				return
			}
			if rng.IntN(2) == 0 {
				time.Sleep(200 * time.Microsecond) // let the copier park
			}
		}
		a.CloseWrite()
	}()
	rng := rand.New(rand.NewPCG(3, 4))
	var got bytes.Buffer
	buf := make([]byte, 8<<10)
	reader.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		n, err := reader.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", got.Len(), err)
		}
		if rng.IntN(16) == 0 {
			time.Sleep(2 * time.Millisecond) // a slow reader fills the socket
		}
	}
	n := <-piped
	<-wrote
	if !bytes.Equal(got.Bytes(), sent.Bytes()) {
		t.Fatalf("received %d bytes, sent %d: they differ", got.Len(), sent.Len())
	}
	if n != int64(sent.Len()) || count.n.Load() != n {
		t.Fatalf("copyHalf reported %d bytes and counted %d; %d were sent", n, count.n.Load(), sent.Len())
	}
}

// TestIdleTunnelsWaitOnFreshGoroutines holds tunnels idle past parkAfter,
// after bursts large enough to take the large buffers, and reads every
// goroutine's stack: each end of each tunnel must wait for its socket on a
// goroutine await started, which never copied and so has the smallest
// stack, and no goroutine may still wait inside the copy loop, on the stack
// that grew while it wrote through TLS or holding a large buffer
// (startPipe, largeRead).
func TestIdleTunnelsWaitOnFreshGoroutines(t *testing.T) {
	h := newHarness(t, nil)
	h.startAgent(h.agentConfig("node-a"))
	echo := startEcho(t, "127.0.0.1:0")
	const n = 20
	for range n {
		c := h.mustConnect(echo)
		defer c.Close()
		if err := echoCheck(c, 64<<10); err != nil {
			t.Fatal(err)
		}
	}
	var awaiting, copying int
	waitFor(t, "every idle end to wait on a fresh goroutine", func() bool {
		awaiting, copying = 0, 0
		buf := make([]byte, 1<<22)
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			switch {
			case strings.Contains(g, "tunnel.copyAdaptive("):
				copying++
			case strings.Contains(g, "tunnel.(*half).await("):
				awaiting++
			}
		}
		return awaiting == 2*n && copying == 0
	})
	t.Logf("%d tunnels idle: %d ends waiting on fresh goroutines, %d goroutines in the copy loop", n, awaiting, copying)
}

// TestRoundTripAllocs runs 64-byte round trips through the whole copy
// path — a client socket piped to a session stream, the session over
// loopback TCP, the peer stream piped to a socket, an echo behind it — and
// counts the heap allocations of every goroutine: the copy path, the fast
// lane and the session allocate nothing per message (12 per round trip
// before the socket reads and the sink bound their callbacks once). Over
// TLS, crypto/tls adds its own per record read, outside this path. Not
// checked under the race detector, whose pools drop buffers on purpose.
func TestRoundTripAllocs(t *testing.T) {
	ln := listenTCP(t, "127.0.0.1:0")
	sc, ss := connPair(t, ln)
	a, b := streamPair(t, sc, ss)
	w := newWorkers()
	defer w.close()
	user, in := connPair(t, ln)
	out, target := connPair(t, ln)
	var count byteCount
	ended := make(chan struct{}, 2)
	startPipe(w, in, a, &count, &count, nil, func(bool) { ended <- struct{}{} })
	startPipe(w, b, out, &count, &count, nil, func(bool) { ended <- struct{}{} })
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(target, buf); err != nil {
				target.Close()
				return
			}
			if _, err := target.Write(buf); err != nil {
				return
			}
		}
	}()
	user.SetDeadline(time.Now().Add(30 * time.Second)) // a stall fails the test instead of hanging it
	msg := make([]byte, 64)
	roundTrip := func() {
		if _, err := user.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(user, msg); err != nil {
			t.Fatal(err)
		}
	}
	for range 200 { // warm the pools and the kept goroutines
		roundTrip()
	}
	const n = 2000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		roundTrip()
	}
	runtime.ReadMemStats(&after)
	perTrip := float64(after.Mallocs-before.Mallocs) / n
	t.Logf("%.3f heap allocations per round trip, all goroutines", perTrip)
	if perTrip > 0.25 && !raceEnabled { // room for a timer or the runtime's own, not for one per message
		t.Errorf("%.3f heap allocations per round trip; want none", perTrip)
	}
	user.Close()
	for range 2 {
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatal("the tunnel did not end after the client closed")
		}
	}
}

// streamPair runs a session over the connection c, s (client and server
// ends), and returns a stream the client opened and the server accepted.
// The sessions close at cleanup.
func streamPair(t *testing.T, c, s net.Conn) (a, b *mux.Stream) {
	t.Helper()
	client, err := mux.Client(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := mux.Server(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if a, err = client.Open(ctx); err != nil {
		t.Fatal(err)
	}
	if b, err = server.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	return a, b
}
