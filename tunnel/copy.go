package tunnel

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunnel-project/tunnel/tunnel/mux"
)

// The copy path (DESIGN.md section 5) lives in this file and nowhere else:
// every tunneled byte on the server and on the agent passes through startPipe.
//
// An idle tunnel must not pin buffers: with 10,000 tunnels open, 64 KiB per
// direction would be over a GiB. So each direction waits, holding no
// buffer, until its source has data, and only then takes a small pooled
// buffer, which it returns at once: a session stream waits in a
// zero-length Read or parks (Park); a socket reads inside the runtime's
// readiness callback, taking the buffer only when the read finds data
// (pooledRead). A read that fills the small buffer
// means more is waiting: the direction switches to a large buffer, which it
// keeps while data streams. A read that returns less than a small buffer's
// worth means the stream has gone quiet: the large buffer goes back to its
// pool, and a session stream also drops its receive buffer (Shrink).

// Buffer sizes, measured in benchmarks/results/. A large buffer keeps room
// for a frame header before the bytes it reads, so that a session stream
// writes the frame from it in place (mux.Stream.WriteFramed); a full large
// read so makes one data frame whose header and body fill four 16 KiB TLS
// records exactly (a 64 KiB read sent a fifth record of 12 bytes after
// them).
const (
	smallBufSize  = 2 << 10
	largeBufSize  = 64 << 10
	largeReadSize = largeBufSize - mux.HeaderSize // after the header's room
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
)

// closeWriter is a connection whose sending side can be shut alone
// (*net.TCPConn, *net.UnixConn, *tls.Conn, and our stream wrapper).
type closeWriter interface {
	CloseWrite() error
}

// shrinker is a connection that can release its receive buffer while no
// data is waiting (*mux.Stream).
type shrinker interface {
	Shrink()
}

// counter receives the number of bytes each write moved; a
// prometheus.Counter is one. Nil counts nothing.
type counter interface {
	Add(float64)
}

// startPipe copies a→b and b→a until both directions have ended, then
// closes both and calls done(false), on the goroutine that ended the last
// direction; it returns at once. A direction that reaches EOF half-closes
// its destination, so the other direction keeps flowing to its own end; a
// direction that fails closes both connections, which ends the other
// direction too. The counters see the bytes of each direction as they
// move.
//
// A tunnel with a mover (move.go) can instead stop without losing a byte
// and without closing its socket: done then gets true, and only the stream
// is closed.
//
// No goroutine waits for the tunnel as a whole. A direction from a
// session stream holds none while it waits: it parks (see "The fast lane"
// below). A direction from a socket that stays quiet for parkAfter moves
// its wait to a new goroutine (await), whose stack stays at the runtime's
// smallest, 2 KiB; the goroutine that copied had grown to 8 KiB writing
// through TLS and, waiting deep in the copy path, would never shrink back.
// An idle tunnel so costs 2 KiB of stack per end instead of 8
// (docs/benchmarks.md). A direction that can do neither — from a TLS
// connection — blocks in Read on its goroutine.
func startPipe(w *workers, a, b net.Conn, aToBCount, bToACount counter, m *mover, done func(moved bool)) {
	t := &tunnelRun{w: w, a: a, b: b, m: m, done: done}
	t.left.Store(2)
	t.ab, t.ba = newHalf(b, a, aToBCount, t), newHalf(a, b, bToACount, t)
	t.ab.start()
	t.ba.start()
}

// start runs the direction on a kept goroutine (workers.go) if it can
// park, and otherwise on a new one: a direction that cannot park (from a
// TLS connection, an SSH channel) waits in Read on its goroutine for the
// tunnel's life, and a kept goroutine's stack may have grown for earlier
// jobs, which an idle tunnel must not hold.
func (h *half) start() {
	if h.st == nil && h.fill == nil {
		go h.copy(false)
		return
	}
	h.t.w.spawn(func() { h.copy(false) })
}

// tunnelRun is one run of startPipe.
type tunnelRun struct {
	w      *workers // runs the directions (nil: goroutines of their own)
	a, b   net.Conn
	ab, ba *half
	m      *mover       // or nil
	left   atomic.Int32 // directions still running
	done   func(moved bool)
}

// halfEnded is called by each direction once it has ended; the last one
// finishes the tunnel.
func (t *tunnelRun) halfEnded() {
	if t.left.Add(-1) > 0 {
		return
	}
	if t.ab.paused && t.ba.paused {
		t.m.sock.SetReadDeadline(time.Time{})
		t.m.stream().Close()
		t.done(true)
		return
	}
	t.a.Close()
	t.b.Close()
	t.done(false)
}

// copyHalf copies src to dst until EOF or an error, then half-closes dst
// (on EOF) or aborts both (on error), and returns the bytes it moved.
func copyHalf(dst, src net.Conn, count counter) int64 {
	h := newHalf(dst, src, count, nil)
	h.copy(false)
	return h.moved.Load()
}

// half is one direction of a tunnel, src to dst.
type half struct {
	dst, src net.Conn
	count    counter
	st       *mux.Stream                  // src, when it is a session stream
	fill     func() (*[]byte, int, error) // pooledRead of src, when it is a socket
	moved    atomic.Int64                 // bytes moved, by the copier and by the sink
	t        *tunnelRun                   // the tunnel, or nil for copyHalf
	paused   bool                         // the half stopped for a move (set before halfEnded)
	// idleUntil is the read deadline armIdle left on src, or zero.
	idleUntil time.Time
}

func newHalf(dst, src net.Conn, count counter, t *tunnelRun) *half {
	h := &half{dst: dst, src: src, count: count, t: t, fill: pooledRead(src)}
	if h.st = sessionStream(src); h.st != nil {
		if sink := socketSink(dst, count, &h.moved); sink != nil {
			h.st.SetSink(sink)
		}
	}
	return h
}

// copy runs the half until it ends or, in a tunnel, until src has nothing
// to read: then it parks the stream, or starts a goroutine that waits for
// the socket (await), and returns; the wake-up calls copy again on a new
// goroutine, with ready set if src need not be waited for first. Between
// one copy and the next, the stream's lock or the go statement orders
// every access to h.
func (h *half) copy(ready bool) {
	fill := h.fill
	var pause pauseFunc
	switch {
	case h.st != nil && h.t != nil:
		pause = func() (*[]byte, int, bool, error) {
			h.disarmIdle(nil) // a parked stream has no reads for it to end
			return nil, 0, h.st.Park(h.resume), nil
		}
	case fill != nil && h.t != nil:
		pause = func() (*[]byte, int, bool, error) {
			if ready {
				ready = false
				bp, n, err := fill()
				return bp, n, false, err
			}
			return h.readOrPark(fill)
		}
	case fill != nil: // copyHalf: waits on its own goroutine
		pause = func() (*[]byte, int, bool, error) {
			bp, n, err := fill()
			return bp, n, false, err
		}
	default:
		pause = waitPause(readWaiter(h.src))
	}
	var largeRead func([]byte) (int, error)
	if h.t != nil && (h.st != nil || fill != nil) { // deadlines that leave the source usable
		largeRead = h.largeRead
	}
	n, parked, err := copyAdaptive(h.dst, h.src, h.count, pause, largeRead)
	h.moved.Add(n) // atomic: once parked, the next copy may already run
	if parked {
		return
	}
	if h.st != nil {
		h.st.SetSink(nil)
	}
	if h.paused = h.mover().pausing(h.src, err); h.paused {
		// Nothing is closed: the move carries on (move.go).
	} else if err != nil {
		abort(h.src)
		abort(h.dst)
	} else if cw, ok := h.dst.(closeWriter); ok {
		cw.CloseWrite()
	} else {
		h.dst.Close()
	}
	if h.t != nil {
		h.t.halfEnded()
	}
}

// mover returns the tunnel's mover, or nil.
func (h *half) mover() *mover {
	if h.t == nil {
		return nil
	}
	return h.t.m
}

// resume is the parked half's wake-up: the stream has something to read.
// Only a tunnel's half parks.
func (h *half) resume() { h.t.w.spawn(func() { h.copy(true) }) }

// parkAfter is how long a direction from a socket waits on the goroutine
// that copied before it hands the wait to a fresh one (await). Not at once:
// the hand-off costs a goroutine and, when data comes, growing the new
// stack again, about 30 µs a message in a ping-pong (measured: the round
// trip went from 1.04× to 1.39× the probe's). A busy tunnel so keeps its
// goroutine, and a quiet one gives up the large stack within parkAfter.
const parkAfter = 50 * time.Millisecond

// readOrPark is the pause of a direction from a socket: it reads what the
// socket has (fill) within parkAfter, then hands the wait to await and
// reports parked. It waits with the socket's read deadline (armIdle),
// which a move sets too (mover.pause); while a move is under way, the
// move's deadline stands.
func (h *half) readOrPark(fill func() (*[]byte, int, error)) (*[]byte, int, bool, error) {
	m := h.mover()
	if !h.armIdle(m) {
		bp, n, err := fill()
		return bp, n, false, err
	}
	bp, n, err := fill()
	if bp != nil || !isTimeout(err) {
		return bp, n, false, err
	}
	if !h.disarmIdle(m) {
		return nil, 0, false, err // a move began: its deadline passed
	}
	go h.await(readWaiter(h.src))
	return nil, 0, true, nil
}

// largeRead is copyAdaptive's read into a large buffer in a tunnel: it
// reads within parkAfter, and returns 0 and no error, quiet, if nothing
// came by then. On a socket, a move's read deadline stands as in
// readOrPark; a stream's deadline is the copy path's alone.
func (h *half) largeRead(buf []byte) (int, error) {
	m := h.mover()
	if h.st != nil {
		m = nil
	}
	if !h.armIdle(m) {
		return h.src.Read(buf)
	}
	n, err := h.src.Read(buf)
	if n == 0 && isTimeout(err) && h.disarmIdle(m) {
		return 0, nil
	}
	return n, err
}

// armIdle makes src's read deadline fall between parkAfter/2 and parkAfter
// from now, and reports false if a move owns the deadline (mover). It
// moves the deadline only when it has come nearer than parkAfter/2: a busy
// direction sets it once every parkAfter/2 or so, not once per read, and
// leaves it set between reads. A read it cuts short so means quiet after
// at least parkAfter/2 instead of parkAfter.
func (h *half) armIdle(m *mover) bool {
	now := time.Now()
	if h.idleUntil.Sub(now) >= parkAfter/2 {
		return true
	}
	h.idleUntil = now.Add(parkAfter)
	return m.idleDeadline(h.src, h.idleUntil)
}

// disarmIdle removes the read deadline armIdle set, if any, before src is
// waited for without one, and reports false if a move owns the deadline.
func (h *half) disarmIdle(m *mover) bool {
	if h.idleUntil.IsZero() {
		return true
	}
	h.idleUntil = time.Time{}
	return m.idleDeadline(h.src, time.Time{})
}

// await waits, on a goroutine of its own, until the socket h reads has
// something to read (or has ended, failed or passed its read deadline,
// which the next Read reports), and then copies on.
func (h *half) await(wait func() error) {
	wait()
	h.copy(true)
}

// pauseFunc is copyAdaptive's pause: it waits, holding no buffer, until
// src has data, or ended or failed (err, io.EOF at the end), or reports
// that it parked. It may read the data itself: then it returns the small
// pooled buffer it read into (first) and how many bytes it holds.
type pauseFunc func() (first *[]byte, n int, parked bool, err error)

// waitPause turns a read waiter into a pause that never parks and reads
// nothing; nil stays nil.
func waitPause(wait func() error) pauseFunc {
	if wait == nil {
		return nil
	}
	return func() (*[]byte, int, bool, error) { return nil, 0, false, wait() }
}

// copyAdaptive copies src to dst with buffers taken as described at the
// top of this file, until EOF (err nil), an error, or a pause that parks
// (parked true). When src goes quiet, it lets go of its buffer and calls
// pause; a nil pause keeps the buffer and reads on. largeRead, if not
// nil, reads into the large buffer instead of src.Read, and returns 0 and
// no error when src stayed quiet for parkAfter: the large buffer then goes
// back too, where it would otherwise wait for the next burst in a blocked
// Read. Unlike io.Copy it never takes a ReaderFrom/WriterTo detour, which
// would allocate a buffer of its own for the stream types used here.
func copyAdaptive(dst io.Writer, src io.Reader, count counter, pause pauseFunc, largeRead func([]byte) (int, error)) (n int64, parked bool, err error) {
	shrink, _ := src.(shrinker)
	framed := framedWriter(dst)
	var bp *[]byte // the buffer in hand; nil while waiting
	large := false
	defer func() {
		if bp != nil {
			release(bp, large)
		}
	}()
	for {
		var nr int
		var rerr error
		switch {
		case bp == nil:
			if pause != nil {
				bp, nr, parked, rerr = pause()
				if parked {
					return n, true, nil
				}
			}
			if bp == nil && rerr == nil {
				bp = smallBufs.Get().(*[]byte)
				nr, rerr = src.Read(*bp)
			}
		case large && largeRead != nil:
			nr, rerr = largeRead(readRoom(bp, large))
		default:
			nr, rerr = src.Read(readRoom(bp, large))
		}
		buf := readRoom(bp, large)
		if nr > 0 {
			var nw int
			var werr error
			if large && framed != nil {
				nw, werr = framed.WriteFramed((*bp)[:mux.HeaderSize+nr])
			} else {
				nw, werr = dst.Write(buf[:nr])
			}
			n += int64(nw)
			if count != nil {
				count.Add(float64(nw))
			}
			if werr != nil {
				return n, false, werr
			}
		}
		if rerr != nil {
			return n, false, eofIsNil(rerr)
		}
		switch {
		case !large && nr == len(buf): // more is waiting
			smallBufs.Put(bp)
			bp, large = largeBufs.Get().(*[]byte), true
		case nr < smallBufSize: // quiet
			if large || pause != nil {
				release(bp, large)
				bp, large = nil, false
			}
			if shrink != nil {
				shrink.Shrink()
			}
		}
	}
}

// readRoom returns the part of buffer bp that reads fill: all of a small
// one, a large one after its room for a frame header; nil for no buffer.
func readRoom(bp *[]byte, large bool) []byte {
	switch {
	case bp == nil:
		return nil
	case large:
		return (*bp)[mux.HeaderSize:]
	}
	return *bp
}

// framedWriter returns the session stream w writes to, which can write a
// large buffer's frame in place, or nil.
func framedWriter(w io.Writer) *mux.Stream {
	if c, ok := w.(net.Conn); ok {
		return sessionStream(c)
	}
	return nil
}

// The fast lane. While a direction from a session stream waits for data,
// the session's read loop may write the stream's data straight to the
// destination socket itself (mux.Stream.SetSink): one non-blocking write,
// no wake-up of the copying goroutine, and so two fewer thread hand-offs
// per round trip than read, wake, write. What the socket does not take at
// once is buffered in the stream as usual, and the copying goroutine writes
// it with blocking writes. Only plain sockets (TCP on the node, the
// unix-socket frontend) take the fast lane; a TLS destination needs a
// goroutine to encrypt. And only small pieces: the read loop serves every
// stream of a session, so bulk data (more than a small buffer's worth in
// one frame) is left to the stream's own copying goroutine, where several
// streams are written in parallel.
//
// The copying goroutine need not even exist while it would only wait: the
// direction parks the stream (mux.Stream.Park) and ends its goroutine, and
// the stream starts a new one when the socket could not take everything,
// or at EOF, a reset or the session's end. With the other direction's
// socket waited for on a fresh goroutine (startPipe), an idle tunnel holds
// one goroutine per end, on the smallest stack.

// sessionStream returns the session stream c reads from, or nil.
func sessionStream(c net.Conn) *mux.Stream {
	switch c := c.(type) {
	case *mux.Stream:
		return c
	case *streamConn:
		return sessionStream(c.Conn)
	}
	return nil
}

// socketSink returns a sink for a session stream that writes to dst's
// socket without blocking, counting what it writes in count and moved; or
// nil if dst is not a plain socket.
func socketSink(dst net.Conn, count counter, moved *atomic.Int64) func([]byte) int {
	rc := rawConn(dst)
	if rc == nil {
		return nil
	}
	s := &sockSink{rc: rc, count: count, moved: moved}
	s.call = s.write
	return s.take
}

// sockSink is socketSink's sink. Its RawConn callback is bound once, so a
// write allocates nothing; only the session's read loop calls take.
type sockSink struct {
	rc    syscall.RawConn
	count counter
	moved *atomic.Int64
	call  func(fd uintptr) bool // s.write
	p     []byte                // what take is writing
	n     int                   // how much of p is written
}

func (s *sockSink) take(p []byte) int {
	if len(p) > smallBufSize {
		return 0 // bulk: the copier's goroutine writes it, beside the read loop
	}
	s.p, s.n = p, 0
	s.rc.Write(s.call)
	n := s.n
	s.p = nil
	if n > 0 {
		s.moved.Add(int64(n))
		if s.count != nil {
			s.count.Add(float64(n))
		}
	}
	return n
}

// write is the RawConn callback: it writes what the socket takes now and
// never waits, which the copier does.
func (s *sockSink) write(fd uintptr) bool {
	for s.n < len(s.p) {
		k, err := syscall.Write(int(fd), s.p[s.n:])
		if err == syscall.EINTR {
			continue
		}
		if k <= 0 || err != nil {
			break // EAGAIN, or an error the blocking write will see
		}
		s.n += k
	}
	return true
}

// resetter is a connection that can end both ways at once, telling the
// peer it was aborted rather than finished (*mux.Stream: RST, not FIN).
type resetter interface {
	Reset() error
}

// abort ends c after a failure: reset if it can be, else closed.
func abort(c net.Conn) {
	if r, ok := c.(resetter); ok {
		r.Reset()
	}
	c.Close()
}

// eofIsNil returns nil for a clean end of input: io.EOF itself, as Read
// returns it. A wrapped io.EOF is a failure that happened to read EOF (a
// session whose connection ended under the stream) and stays an error, so
// the other direction is aborted instead of left half-open.
func eofIsNil(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}

func release(bp *[]byte, large bool) {
	if large {
		largeBufs.Put(bp)
	} else {
		smallBufs.Put(bp)
	}
}

// readWaiter returns a function that blocks until src has data to read,
// or has reached EOF or failed, without holding a buffer; or nil if src
// cannot wait that way.
func readWaiter(src io.Reader) func() error {
	switch c := src.(type) {
	case *mux.Stream:
		// A zero-length Read blocks until data is buffered or the stream
		// ends, and consumes nothing (TestReadWaiters pins this down).
		return func() error { _, err := c.Read(nil); return err }
	case *streamConn:
		return readWaiter(c.Conn)
	case syscall.Conn: // *net.TCPConn, *net.UnixConn
		if rc := rawConn(c); rc != nil {
			return func() error { return rc.Read(peekReadable) }
		}
	}
	return nil
}

// rawConn returns the socket under c, or nil if c is not one.
func rawConn(c any) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// peekReadable is a syscall.RawConn Read callback that reports whether the
// socket has data, EOF or an error pending, consuming nothing: false makes
// the runtime wait for the socket to become readable and call it again.
func peekReadable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}

// pooledRead returns a function that waits until the socket src has data,
// or has reached EOF or failed, and reads the data into a small buffer it
// takes from the pool only then: one read where a wait and a read took a
// peek and a read. It returns the buffer and the byte count, or no buffer
// and io.EOF at the end, or the error (a passed read deadline among them).
// nil if src is not a socket. One goroutine at a time may call it.
func pooledRead(src io.Reader) func() (*[]byte, int, error) {
	rc := rawConn(src)
	if rc == nil {
		return nil
	}
	r := &sockRead{rc: rc}
	r.call = r.read
	return r.fill
}

// sockRead is pooledRead's reader. Its RawConn callback is bound once, so
// a read allocates nothing.
type sockRead struct {
	rc   syscall.RawConn
	call func(fd uintptr) bool // r.read
	bp   *[]byte               // the buffer read into, if the read found data
	n    int
	err  error
}

func (r *sockRead) fill() (*[]byte, int, error) {
	err := r.rc.Read(r.call)
	bp, n, rerr := r.bp, r.n, r.err
	r.bp, r.n, r.err = nil, 0, nil
	switch {
	case err != nil:
		return nil, 0, err
	case rerr != nil:
		return nil, 0, os.NewSyscallError("read", rerr)
	case bp == nil:
		return nil, 0, io.EOF
	}
	return bp, n, nil
}

// read is the RawConn callback: false makes the runtime wait for the
// socket and call it again.
func (r *sockRead) read(fd uintptr) bool {
	r.bp = smallBufs.Get().(*[]byte)
	for {
		r.n, r.err = syscall.Read(int(fd), *r.bp)
		if r.err != syscall.EINTR {
			break
		}
	}
	if r.n > 0 {
		return true
	}
	smallBufs.Put(r.bp)
	r.bp = nil
	return r.err != syscall.EAGAIN
}
