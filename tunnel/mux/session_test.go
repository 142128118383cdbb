package mux

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestEcho(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		c, s := sessions(t, tr, nil, nil)
		go echoServer(s)
		size := 3 << 20
		if raceEnabled {
			size = 3 << 19
		}
		data := randBytes(size+17, 1)
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := echoOnce(c, data); err != nil {
					t.Errorf("stream %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		eventually(t, 5*time.Second, "streams to leave", func() bool { return c.NumStreams() == 0 && s.NumStreams() == 0 })
	})
}

// echoServer accepts streams and echoes each until EOF, then half-closes
// it; it returns when the session ends.
func echoServer(s *Session) {
	for {
		st, err := s.Accept(context.Background())
		if err != nil {
			return
		}
		go func() {
			io.Copy(st, st)
			st.CloseWrite()
		}()
	}
}

// echoOnce sends data on a new stream of c, half-closes, and checks that the
// same bytes come back before EOF.
func echoOnce(c *Session, data []byte) error {
	st, err := c.Open(context.Background())
	if err != nil {
		return err
	}
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(st)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read: %w", rerr)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("echo differs: got %d bytes (sha %x), want %d (sha %x)", len(got), sha256.Sum256(got), len(data), sha256.Sum256(data))
	}
	return nil
}

// TestCloseOrders opens and closes many streams with each half-close order
// and with resets, and checks that no stream stays in either table.
func TestCloseOrders(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		c, s := sessions(t, tr, nil, nil)
		for i := range 60 {
			a, b := openAccept(t, c, s)
			if _, err := a.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			readN(t, b, 4)
			switch i % 4 {
			case 0: // opener first
				a.Close()
				expectEOF(t, b)
				b.Close()
				expectEOF(t, a)
			case 1: // accepter first
				b.Close()
				expectEOF(t, a)
				a.Close()
				expectEOF(t, b)
			case 2: // both at once
				a.Close()
				b.Close()
				expectEOF(t, a)
				expectEOF(t, b)
			case 3: // reset
				b.Reset()
				if _, err := a.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
					t.Fatalf("Read after peer reset: %v", err)
				}
			}
		}
		eventually(t, 5*time.Second, "empty tables", func() bool { return c.NumStreams() == 0 && s.NumStreams() == 0 })
	})
}

func readN(tb testing.TB, r io.Reader, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		tb.Fatalf("read %d: %v", n, err)
	}
	return b
}

func expectEOF(tb testing.TB, st *Stream) {
	tb.Helper()
	if n, err := st.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		tb.Fatalf("stream %d: Read = %d, %v; want EOF", st.id, n, err)
	}
}

// recordConn records the size of every Write.
type recordConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(p))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *recordConn) taken() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.writes
	c.writes = nil
	return w
}

// TestOpenWithOneWrite checks the dial in one write: OpenWith puts the SYN
// on the data frame with the body, and header and body go out in one Write.
func TestOpenWithOneWrite(t *testing.T) {
	a, b := net.Pipe()
	rc := &recordConn{Conn: a}
	c, err := Client(rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Server(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer s.Close()
	first := []byte("CONNECT 10.0.0.7:10250")
	st, err := c.OpenWith(ctxT(t, 5*time.Second), first)
	if err != nil {
		t.Fatal(err)
	}
	writes := rc.taken()
	want := makeHeader(typeData, flagSYN, st.id, uint32(len(first)))
	if len(writes) != 1 || !bytes.Equal(writes[0], append(want[:], first...)) {
		t.Fatalf("writes = %x; want one write %x%x", writes, want, first)
	}
	got, err := s.Accept(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if b := readN(t, got, len(first)); !bytes.Equal(b, first) {
		t.Fatalf("accepted stream read %q", b)
	}
}

// TestAckRidesOnAnswer checks the accepted side's half of a dial in one
// write each way: the ACK goes out on the stream's first frame, the
// answer, and not as a frame of its own; a stream that sends nothing is
// ACKed alone after ackDelay, which frees the opener's open slot.
func TestAckRidesOnAnswer(t *testing.T) {
	rc := &recordConn{}
	ccfg := DefaultConfig()
	ccfg.OpenBacklog = 1
	c, s := sessions(t, pipeWith(nil, rc), ccfg, nil)
	ctx := ctxT(t, 5*time.Second)
	out, err := c.OpenWith(ctx, []byte("dial"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	readN(t, in, 4)
	answer := []byte("ok")
	if _, err := in.Write(answer); err != nil {
		t.Fatal(err)
	}
	want := makeHeader(typeData, flagACK, in.id, uint32(len(answer)))
	if writes := rc.taken(); len(writes) != 1 || !bytes.Equal(writes[0], append(want[:], answer...)) {
		t.Fatalf("writes = %x; want one write %x%x", writes, want, answer)
	}
	readN(t, out, len(answer))

	// The slot is free again (OpenBacklog 1): the next open waits for an
	// ACK that nothing carries.
	start := time.Now()
	if _, err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(ctx); err != nil {
		t.Fatalf("open after an unanswered accept: %v", err)
	}
	if waited := time.Since(start); waited < ackDelay {
		t.Fatalf("the lone ACK came after %v, before ackDelay (%v)", waited, ackDelay)
	}
	want = makeHeader(typeWindowUpdate, flagACK, in.id+2, 0)
	if writes := rc.taken(); len(writes) != 1 || !bytes.Equal(writes[0], want[:]) {
		t.Fatalf("writes = %x; want the lone ACK %x", writes, want)
	}
}

// wrapper is a test connection that wraps another (recordConn,
// pointerConn).
type wrapper interface {
	net.Conn
	wrap(net.Conn)
}

func (c *recordConn) wrap(n net.Conn)  { c.Conn = n }
func (c *pointerConn) wrap(n net.Conn) { c.Conn = n }

// pipeWith is the pipe transport with the client's end wrapped in client
// and the server's in server, where not nil.
func pipeWith(client, server wrapper) transport {
	return transport{"pipe", func(testing.TB) (net.Conn, net.Conn) {
		a, b := net.Pipe()
		if client != nil {
			client.wrap(a)
			a = client
		}
		if server != nil {
			server.wrap(b)
			b = server
		}
		return a, b
	}}
}

// pointerConn records the address of the first byte of each Write.
type pointerConn struct {
	net.Conn
	mu    sync.Mutex
	addrs []*byte
}

func (c *pointerConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.addrs = append(c.addrs, unsafe.SliceData(p))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestWriteFramedInPlace checks that WriteFramed writes an uncontended
// frame from the caller's buffer, header in its room, without a copy; that
// data larger than a frame, or than the window, still arrives whole; and
// that the bytes read match in every case.
func TestWriteFramedInPlace(t *testing.T) {
	pc := &pointerConn{}
	cfg := DefaultConfig()
	cfg.MaxFrame = 16 << 10
	c, s := sessions(t, pipeWith(pc, nil), cfg, nil)
	out, in := openAccept(t, c, s)
	for _, size := range []int{1, 16 << 10, 16<<10 + 1, 3 * int(initialWindow) / 2} {
		buf := make([]byte, HeaderSize+size)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		want := bytes.Clone(buf[HeaderSize:])
		pc.mu.Lock()
		pc.addrs = nil
		pc.mu.Unlock()
		got := make(chan []byte, 1)
		go func() { got <- readN(t, in, size) }()
		if n, err := out.WriteFramed(buf); n != size || err != nil {
			t.Fatalf("WriteFramed(%d bytes) = %d, %v", size, n, err)
		}
		if g := <-got; !bytes.Equal(g, want) {
			t.Fatalf("%d bytes: read back different bytes", size)
		}
		pc.mu.Lock()
		inPlace := len(pc.addrs) == 1 && pc.addrs[0] == &buf[0]
		pc.mu.Unlock()
		if fits := size <= cfg.MaxFrame; inPlace != fits {
			t.Fatalf("%d bytes: written in place %v; want %v", size, inPlace, fits)
		}
	}
}

// TestFramesWholePerWrite checks that concurrent writers never split a
// frame across connection Writes, and that frames queued while a write is
// in flight are coalesced into fewer Writes.
func TestFramesWholePerWrite(t *testing.T) {
	a, b := net.Pipe()
	slow := &slowConn{Conn: a, delay: 2 * time.Millisecond}
	rc := &recordConn{Conn: slow}
	c := discardingPair(t, rc, b)
	const writers, msgs = 16, 20
	var wg sync.WaitGroup
	for i := range writers {
		st, err := c.Open(ctxT(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range msgs {
				if _, err := st.Write(randBytes(100+i*j, uint64(j))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	frames := 0
	writes := rc.taken()
	for _, w := range writes {
		for len(w) > 0 {
			if len(w) < headerSize {
				t.Fatalf("a Write ends inside a header: %x", w)
			}
			h := header(w[:headerSize])
			n := headerSize
			if h.typ() == typeData {
				n += int(h.length())
			}
			if len(w) < n {
				t.Fatalf("a Write ends inside frame %s", h.String())
			}
			w = w[n:]
			frames++
		}
	}
	if frames < writers*msgs {
		t.Fatalf("saw %d frames, want at least %d", frames, writers*msgs)
	}
	if len(writes) >= frames {
		t.Fatalf("%d Writes for %d frames: nothing coalesced", len(writes), frames)
	}
	t.Logf("%d frames in %d writes", frames, len(writes))
}

// TestBusySessionGathers checks the gathering of the write path: a lone
// sender never yields (its writes each go out at once), and once frames of
// several senders have met in one write, senders made ready together share
// writes. GOMAXPROCS 1 makes "ready together" exact: a round's senders all
// wait on the one P when the first of them sends.
func TestBusySessionGathers(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	a, b := tcpPair(t)
	gate := &gatedConn{Conn: a}
	rc := &recordConn{Conn: gate}
	c := discardingPair(t, rc, b)
	const senders = 8
	streams := make([]*Stream, senders)
	for i := range streams {
		st, err := c.Open(ctxT(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		streams[i] = st
	}
	gathering := func() int {
		c.w.mu.Lock()
		defer c.w.mu.Unlock()
		return c.w.gather
	}
	round := func() {
		var wg sync.WaitGroup
		for _, st := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := st.Write([]byte("ping")); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}

	for range 20 { // one sender at a time
		if _, err := streams[0].Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
	}
	if g := gathering(); g != 0 {
		t.Fatalf("after a lone sender's writes, %d writes would yield; want 0", g)
	}

	gate.hold.Store(true) // the first write of a round stalls: the others pile up behind it
	round()
	gate.hold.Store(false)
	if gathering() == 0 {
		t.Fatal("frames of several senders met in a write, but the session does not gather")
	}
	rc.taken()
	const rounds = 20
	for range rounds {
		round()
	}
	if writes := len(rc.taken()); writes > rounds*senders/2 {
		t.Fatalf("%d Writes for %d frames sent by senders ready together; want at most half", writes, rounds*senders)
	}
}

// gatedConn makes each Write wait a millisecond while hold is set.
type gatedConn struct {
	net.Conn
	hold atomic.Bool
}

func (c *gatedConn) Write(p []byte) (int, error) {
	if c.hold.Load() {
		time.Sleep(time.Millisecond)
	}
	return c.Conn.Write(p)
}

// discardingPair runs a client session on a and a server session on b
// whose accepted streams discard what they read, and returns the client;
// both close when t ends.
func discardingPair(t *testing.T, a, b net.Conn) *Session {
	t.Helper()
	c, s := sessionsOn(t, a, b, nil, nil)
	go func() {
		for {
			st, err := s.Accept(context.Background())
			if err != nil {
				return
			}
			go io.Copy(io.Discard, st)
		}
	}()
	return c
}

// slowConn delays every Write, so writers pile up behind it.
type slowConn struct {
	net.Conn
	delay time.Duration
}

func (c *slowConn) Write(p []byte) (int, error) {
	time.Sleep(c.delay)
	return c.Conn.Write(p)
}

// TestZeroLengthRead checks that Read(nil) waits for data without
// consuming it, and reports the stream's end.
func TestZeroLengthRead(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		c, s := sessions(t, tr, nil, nil)
		a, b := openAccept(t, c, s)
		returned := make(chan error, 1)
		go func() { _, err := b.Read(nil); returned <- err }()
		select {
		case err := <-returned:
			t.Fatalf("Read(nil) returned %v before any data", err)
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := a.Write([]byte("abc")); err != nil {
			t.Fatal(err)
		}
		if err := <-returned; err != nil {
			t.Fatalf("Read(nil) = %v", err)
		}
		if n, err := b.Read(nil); n != 0 || err != nil {
			t.Fatalf("Read(nil) with data buffered = %d, %v", n, err)
		}
		if got := readN(t, b, 3); string(got) != "abc" {
			t.Fatalf("read %q after Read(nil)", got)
		}
		a.Close()
		if n, err := b.Read(nil); n != 0 || err != io.EOF {
			t.Fatalf("Read(nil) after FIN = %d, %v", n, err)
		}
		a2, b2 := openAccept(t, c, s)
		go func() { _, err := b2.Read(nil); returned <- err }()
		a2.Reset()
		if err := <-returned; !errors.Is(err, ErrStreamReset) {
			t.Fatalf("Read(nil) after reset = %v", err)
		}
	})
}

// TestDeadlines checks that deadlines wake blocked Reads and Writes with a
// timeout error, can be moved while a call is blocked, and can be cleared.
func TestDeadlines(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		c, s := sessions(t, tr, nil, nil)
		a, b := openAccept(t, c, s)

		// A Read blocked with no deadline is woken by setting one.
		errc := make(chan error, 1)
		go func() { _, err := b.Read(make([]byte, 1)); errc <- err }()
		time.Sleep(20 * time.Millisecond)
		b.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
		checkTimeout(t, <-errc)

		// The deadline stays passed until moved; clearing it makes Read work.
		_, err := b.Read(make([]byte, 1))
		checkTimeout(t, err)
		b.SetReadDeadline(time.Time{})
		a.Write([]byte("x"))
		readN(t, b, 1)

		// Extending a deadline while blocked keeps the Read waiting past
		// the old deadline.
		b.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		go func() { _, err := b.Read(make([]byte, 1)); errc <- err }()
		b.SetReadDeadline(time.Now().Add(time.Hour))
		select {
		case err := <-errc:
			t.Fatalf("Read returned %v after its deadline was extended", err)
		case <-time.After(500 * time.Millisecond):
		}
		a.Write([]byte("y"))
		if err := <-errc; err != nil {
			t.Fatal(err)
		}

		// A Write waiting for window is woken by its deadline.
		a, _ = openAccept(t, c, s)
		big := make([]byte, int(initialWindow)+1)
		a.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := a.Write(big)
		checkTimeout(t, err)
		if n != int(initialWindow) {
			t.Fatalf("Write wrote %d before its deadline; want the window, %d", n, initialWindow)
		}
	})
}

func checkTimeout(tb testing.TB, err error) {
	tb.Helper()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		tb.Fatalf("error %v is not a timeout", err)
	}
}

// TestStreamErrors checks the errors of Writes after CloseWrite and of
// both ends after a reset.
func TestStreamErrors(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		c, s := sessions(t, tr, nil, nil)
		a, b := openAccept(t, c, s)
		a.CloseWrite()
		if _, err := a.Write([]byte("x")); !errors.Is(err, ErrStreamClosed) {
			t.Fatalf("Write after CloseWrite: %v", err)
		}
		if _, err := b.Write([]byte("still open")); err != nil {
			t.Fatalf("peer Write after our CloseWrite: %v", err)
		}
		readN(t, a, len("still open"))
		b.Reset()
		for _, st := range []*Stream{a, b} {
			if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
				t.Fatalf("stream %d Read after reset: %v", st.id, err)
			}
		}
		if _, err := b.Write([]byte("x")); !errors.Is(err, ErrStreamReset) {
			t.Fatalf("Write after Reset: %v", err)
		}
	})
}

// TestPing pings both ways.
func TestPing(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		c, s := sessions(t, tr, nil, nil)
		var wg sync.WaitGroup
		for _, sess := range []*Session{c, s, c, s} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := sess.Ping(ctxT(t, 5*time.Second)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	})
}

// TestAcceptBacklog checks that SYNs beyond the backlog are reset and cost
// the accepting side nothing.
func TestAcceptBacklog(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		scfg := DefaultConfig()
		scfg.AcceptBacklog = 2
		c, s := sessions(t, tr, nil, scfg)
		var streams []*Stream
		for range 5 {
			st, err := c.Open(ctxT(t, 5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, st)
		}
		for i, st := range streams {
			wait := 200 * time.Millisecond // nothing comes for these
			if i >= 2 {
				wait = 10 * time.Second // the RST comes at once
			}
			st.SetReadDeadline(time.Now().Add(wait))
			_, err := st.Read(make([]byte, 1))
			if i < 2 && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("stream %d in the backlog: Read = %v", i, err)
			}
			if i >= 2 && !errors.Is(err, ErrStreamReset) {
				t.Fatalf("stream %d beyond the backlog: Read = %v", i, err)
			}
		}
		if n := s.NumStreams(); n != 2 {
			t.Fatalf("server holds %d streams; want the backlog, 2", n)
		}
		eventually(t, 5*time.Second, "refused streams to leave", func() bool { return c.NumStreams() == 2 })
	})
}

// TestOpenWaitsForAck checks that Open waits while OpenBacklog opens are
// not yet ACKed, and that ctx bounds the wait.
func TestOpenWaitsForAck(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		ccfg := DefaultConfig()
		ccfg.OpenBacklog = 2
		c, s := sessions(t, tr, ccfg, nil)
		for range 2 {
			if _, err := c.Open(ctxT(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if _, err := c.Open(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("third Open before any ACK: %v", err)
		}
		if _, err := s.Accept(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Open(ctxT(t, 5*time.Second)); err != nil {
			t.Fatalf("Open after an ACK: %v", err)
		}
	})
}

// TestGoAway checks that after the peer's go away Open fails and open
// streams carry on.
func TestGoAway(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		c, s := sessions(t, tr, nil, nil)
		a, b := openAccept(t, c, s)
		if err := s.GoAway(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the go away", func() bool {
			_, err := c.Open(context.Background())
			return errors.Is(err, ErrRemoteGoAway)
		})
		a.Write([]byte("after"))
		readN(t, b, 5)
	})
}

// TestSessionEnd checks what each side sees when one closes: Err, Done,
// buffered data before the error, and calls after the end.
func TestSessionEnd(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		c, s := sessions(t, tr, nil, nil)
		a, b := openAccept(t, c, s)
		a.Write([]byte("last words"))
		eventually(t, 5*time.Second, "data to arrive", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.buf.n == len("last words")
		})
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Err(); err != ErrSessionClosed {
			t.Fatalf("closer's Err = %v", err)
		}
		<-s.Done()
		if err := s.Err(); !errors.Is(err, ErrRemoteGoAway) && !errors.Is(err, ErrConnLost) {
			t.Fatalf("peer's Err = %v", err)
		}
		readN(t, b, len("last words"))
		if _, err := b.Read(make([]byte, 1)); err != s.Err() {
			t.Fatalf("Read after the end = %v; want the session's error", err)
		}
		if _, err := a.Write([]byte("x")); err != ErrSessionClosed {
			t.Fatalf("Write after Close = %v", err)
		}
		if _, err := c.Open(context.Background()); err != ErrSessionClosed {
			t.Fatalf("Open after Close = %v", err)
		}
		if _, err := s.Accept(context.Background()); err != s.Err() {
			t.Fatalf("Accept after the end = %v", err)
		}
		if _, err := c.Ping(context.Background()); err != ErrSessionClosed {
			t.Fatalf("Ping after Close = %v", err)
		}
	})
}
