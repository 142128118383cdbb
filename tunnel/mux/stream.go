package mux

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// errResetByPeer is what Read and Write return after the peer's RST.
var errResetByPeer = fmt.Errorf("%w by peer", ErrStreamReset)

// Stream is one bidirectional byte stream of a session. It implements
// net.Conn. Close is a half-close, as in yamux: it sends FIN and the stream
// keeps reading until the peer's FIN; Reset aborts both directions.
type Stream struct {
	sess *Session
	id   uint32

	mu        sync.Mutex
	buf       recvBuffer
	credit    uint32 // bytes the peer may still send before our next window update
	window    uint32 // receive window: credit + buffered never exceeds it
	sendWin   uint32 // bytes this side may still send
	synFirst  bool   // the next data frame carries SYN (OpenWith)
	holdsSlot bool   // opened here and not ACKed yet: holds a session open slot
	ackOwed   bool   // accepted, ACK not sent yet: the next frame carries it
	closing   bool   // CloseWrite or Reset was called: no more Writes
	sentFIN   bool
	recvFIN   bool
	resetErr  error            // why the stream was reset, if it was
	gone      bool             // out of the session's table
	sink      func([]byte) int // SetSink: where the read loop may write data straight to
	parked    bool             // a zero-length Read waits with nothing buffered, or Park
	wake      func()           // Park: called once when the reader has something to read
	ackTimer  *time.Timer      // sends the owed ACK alone if no frame carried it in time

	readCh  chan struct{} // a token when data, FIN or RST arrived
	writeCh chan struct{} // a token when window arrived or Writes must stop
	wlock   chan struct{} // held by the Write in progress
	rdl     deadline
	wdl     deadline
}

func newStream(s *Session, id uint32) *Stream {
	return &Stream{
		sess: s, id: id,
		credit: initialWindow, window: initialWindow, sendWin: initialWindow,
		readCh:  make(chan struct{}, 1),
		writeCh: make(chan struct{}, 1),
		wlock:   make(chan struct{}, 1),
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// StreamID returns the stream's ID: odd if the client opened it, even if the
// server did.
func (st *Stream) StreamID() uint32 { return st.id }

// Read reads buffered data, waiting for some if there is none. Data buffered
// before the peer's FIN, or before the session ended, is returned first;
// then io.EOF, or the session's error. After a reset it returns
// ErrStreamReset at once. A zero-length Read (Read(nil)) waits the same way
// but consumes nothing: it returns 0, nil once data is buffered, or the
// error a Read would return.
func (st *Stream) Read(p []byte) (int, error) {
	for {
		n, delta, ok, err := st.tryRead(p)
		if ok {
			if delta > 0 {
				h := makeHeader(typeWindowUpdate, st.ackFlag(), st.id, delta)
				st.sess.w.post(&h) // if this fails, the session has ended
			}
			return n, err
		}
		select {
		case <-st.readCh:
		case <-st.sess.dead:
		case <-st.rdl.wait():
		}
	}
}

// tryRead reads what is buffered or reports why the stream cannot be read;
// ok false means wait. delta is a window update to send.
func (st *Stream) tryRead(p []byte) (n int, delta uint32, ok bool, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.parked = false
	switch {
	case st.resetErr != nil:
		return 0, 0, true, st.resetErr
	case st.rdl.passed():
		return 0, 0, true, errTimeout
	case st.buf.n > 0 && len(p) == 0:
		return 0, 0, true, nil
	case st.buf.n > 0:
		n = st.buf.read(p)
		if st.buf.n > 0 {
			notify(st.readCh) // pass the turn to a concurrent reader
		}
		return n, st.creditLocked(), true, nil
	case st.recvFIN:
		return 0, 0, true, io.EOF
	case st.sess.isDead():
		return 0, 0, true, st.sess.Err()
	}
	st.parked = len(p) == 0
	return 0, 0, false, nil
}

// SetSink gives the stream a destination for its data that the session's
// read loop may write to itself: while the stream's reader waits in a
// zero-length Read with nothing buffered, each data frame that arrives is
// offered to sink first, and only what sink does not take is buffered and
// wakes the reader. Bytes sink takes are consumed (Read never returns
// them) and count toward window updates as read bytes do. sink must not
// block: it is called on the read loop, and returns how many of its bytes
// it took, in order. Nil removes the sink.
//
// This is the copy path's fast lane (tunnel/copy.go): a tunnel's bytes go
// from the session's connection to the destination socket in one write,
// with no wake-up of the copying goroutine in between. It assumes one
// reader, which writes what it reads to the same destination: while it
// waits in Read(nil) it writes nothing, so the two never interleave.
func (st *Stream) SetSink(sink func([]byte) int) {
	st.mu.Lock()
	st.sink = sink
	st.mu.Unlock()
}

// Park is a zero-length Read that does not hold a goroutine: instead of
// waiting, the reader registers wake and goes away, and the sink takes
// arriving data as it would during Read(nil). wake is called once, on the
// session's read loop or on whichever goroutine ends the stream, as soon
// as a Read would not wait: data the sink did not take, EOF, a reset, or
// the session's end (read deadlines do not apply). wake must not block;
// it typically starts a goroutine that reads. Park returns false, and
// registers nothing, if a Read would not wait now. Between Park and wake
// nobody may Read.
//
// The copy path parks the direction from the session to a socket while
// the tunnel is idle, so that an idle tunnel holds one goroutine per end
// instead of two.
func (st *Stream) Park(wake func()) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.buf.n > 0 || st.recvFIN || st.resetErr != nil || st.sess.isDead() {
		return false
	}
	st.parked, st.wake = true, wake
	return true
}

// wakeReader wakes the reader: a token for a Read that waits, and the call
// Park registered, if any. Called without st.mu.
func (st *Stream) wakeReader() {
	notify(st.readCh)
	st.mu.Lock()
	wake := st.wake
	if wake != nil {
		st.wake, st.parked = nil, false
	}
	st.mu.Unlock()
	if wake != nil {
		wake()
	}
}

// creditLocked decides the window update after a read. Once the peer's
// credit plus what is buffered has fallen to half the window or below, it
// tops the credit back up to the window, first doubling the window when
// MaxStreamWindow and the session budget allow. It returns the delta to
// send, or 0.
func (st *Stream) creditLocked() uint32 {
	if st.recvFIN || st.gone {
		return 0
	}
	held := st.buf.held() // counting a body being read in right now
	if st.window-st.credit-held < st.window/2 {
		return 0
	}
	if limit := st.sess.cfg.MaxStreamWindow; st.window < limit {
		next := min(st.window*2, limit)
		if st.sess.budget.take(int64(next - st.window)) {
			st.window = next
		}
	}
	delta := st.window - st.credit - held
	st.credit += delta
	return delta
}

// Write writes p as data frames of at most Config.MaxFrame bytes, waiting
// for send window as needed, and returns once every frame has been written
// to the connection, or with the error that stopped it. Concurrent Writes
// do not interleave.
func (st *Stream) Write(p []byte) (int, error) { return st.write(context.Background(), nil, p) }

// WriteFramed writes b[HeaderSize:] as Write does, with b[:HeaderSize] as
// room for a frame header, which it overwrites. When the data goes out as
// one frame and nothing else waits to be written, the frame is written from
// b itself, header and body in place, instead of being copied into the
// session's batch first: the copy path's large buffers (tunnel/copy.go)
// leave this room, and bulk data so crosses one copy fewer.
func (st *Stream) WriteFramed(b []byte) (int, error) {
	return st.write(context.Background(), b, b[headerSize:])
}

// write writes p; framed, if not nil, is p with HeaderSize bytes of room
// before it (WriteFramed).
func (st *Stream) write(ctx context.Context, framed, p []byte) (int, error) {
	if err := st.lockWrite(ctx, true); err != nil {
		return 0, err
	}
	defer st.unlockWrite()
	done := 0
	for done < len(p) {
		n, flags, err := st.takeWindow(ctx, len(p)-done)
		if err != nil {
			return done, err
		}
		if framed != nil && n == len(p) && n <= st.sess.cfg.MaxFrame {
			err = st.sess.w.sendFramed(st.id, flags, framed)
		} else {
			err = st.sess.w.sendData(st.id, flags, p[done:done+n])
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// takeWindow waits for send window and takes up to want bytes of it, at
// most four frames' worth.
func (st *Stream) takeWindow(ctx context.Context, want int) (int, uint16, error) {
	for {
		n, flags, err := st.tryTakeWindow(want)
		if n > 0 || err != nil {
			return n, flags, err
		}
		select {
		case <-st.writeCh:
		case <-st.sess.dead:
		case <-st.wdl.wait():
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
}

func (st *Stream) tryTakeWindow(want int) (int, uint16, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.resetErr != nil:
		return 0, 0, st.resetErr
	case st.closing:
		return 0, 0, ErrStreamClosed
	case st.sess.isDead():
		return 0, 0, st.sess.Err()
	case st.wdl.passed():
		return 0, 0, errTimeout
	case st.sendWin == 0:
		return 0, 0, nil
	}
	n := min(want, int(st.sendWin), 4*st.sess.cfg.MaxFrame)
	st.sendWin -= uint32(n)
	flags := st.ackFlagLocked()
	if st.synFirst {
		flags, st.synFirst = flagSYN, false
	}
	return n, flags, nil
}

// lockWrite takes the stream's write lock, giving up when the session ends,
// ctx ends or (if useDeadline) the write deadline passes.
func (st *Stream) lockWrite(ctx context.Context, useDeadline bool) error {
	select {
	case st.wlock <- struct{}{}:
		return nil
	default:
	}
	var dl <-chan struct{}
	if useDeadline {
		dl = st.wdl.wait()
	}
	select {
	case st.wlock <- struct{}{}:
		return nil
	case <-st.sess.dead:
		return st.sess.Err()
	case <-dl:
		return errTimeout
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (st *Stream) unlockWrite() { <-st.wlock }

// CloseWrite half-closes the stream: it sends FIN after the Write in
// progress, if any (a Write still waiting for window gives up with
// ErrStreamClosed). The peer reads EOF after the data before it. Reading
// goes on until the peer's FIN, which removes the stream from the session.
func (st *Stream) CloseWrite() error {
	st.mu.Lock()
	if st.closing {
		st.mu.Unlock()
		return nil
	}
	st.closing = true
	st.mu.Unlock()
	notify(st.writeCh)
	if err := st.lockWrite(context.Background(), false); err != nil {
		return err
	}
	defer st.unlockWrite()
	st.mu.Lock()
	if st.resetErr != nil {
		st.mu.Unlock()
		return nil
	}
	st.sentFIN = true
	if st.recvFIN {
		st.leaveLocked()
	}
	flags := flagFIN | st.ackFlagLocked()
	st.mu.Unlock()
	h := makeHeader(typeWindowUpdate, flags, st.id, 0)
	return st.sess.w.post(&h)
}

// Close is CloseWrite: yamux's half-close. To abandon a stream whose peer may
// keep sending, call Reset, or the stream stays in the session (with up to
// its window buffered) until the peer's FIN.
func (st *Stream) Close() error { return st.CloseWrite() }

// Reset aborts the stream in both directions: it sends RST (unless the
// stream had already closed both ways), drops what was buffered, and makes
// Reads and Writes on both sides fail with ErrStreamReset.
func (st *Stream) Reset() error {
	st.mu.Lock()
	if st.resetErr != nil {
		st.mu.Unlock()
		return nil
	}
	st.resetErr, st.closing = ErrStreamReset, true
	st.buf.release()
	wasGone := st.gone
	st.leaveLocked()
	st.ackFlagLocked() // an RST answers the SYN as well
	st.mu.Unlock()
	st.wakeReader()
	notify(st.writeCh)
	if wasGone || st.sess.isDead() {
		return nil
	}
	h := makeHeader(typeWindowUpdate, flagRST, st.id, 0)
	return st.sess.w.post(&h)
}

// Shrink releases the stream's receive memory while nothing is buffered. The
// buffer already gives its chunks back whenever it drains, so this is only a
// safety net for the copy path, which calls it when a stream goes quiet.
func (st *Stream) Shrink() {
	st.mu.Lock()
	if st.buf.n == 0 {
		st.buf.tidy()
	}
	st.mu.Unlock()
}

// LocalAddr returns the session connection's local address.
func (st *Stream) LocalAddr() net.Addr { return st.sess.LocalAddr() }

// RemoteAddr returns the session connection's remote address.
func (st *Stream) RemoteAddr() net.Addr { return st.sess.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	st.rdl.set(t)
	st.wdl.set(t)
	return nil
}

// SetReadDeadline sets when pending and future Reads fail with an error
// that is a net.Error with Timeout() true and matches
// os.ErrDeadlineExceeded. The zero time means no deadline.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.rdl.set(t)
	return nil
}

// SetWriteDeadline sets when pending and future Writes fail (as
// SetReadDeadline describes). It bounds the wait for send window and for the
// Write lock; a frame handed to the connection is bounded by
// Config.WriteTimeout instead.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.wdl.set(t)
	return nil
}

// ackDelay is how long an accepted stream's ACK waits for a frame to ride
// on (see Session.Accept).
const ackDelay = 10 * time.Millisecond

// owe marks the ACK of a stream the peer opened as owed: the stream's next
// frame carries it, or it goes alone after ackDelay.
func (st *Stream) owe() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.resetErr == nil {
		st.ackOwed = true
		st.ackTimer = time.AfterFunc(ackDelay, st.acknowledge)
	}
}

// ackFlagLocked returns flagACK if the ACK is owed, and marks it paid by
// the frame about to be sent; else 0.
func (st *Stream) ackFlagLocked() uint16 {
	if !st.ackOwed {
		return 0
	}
	st.ackOwed = false
	st.ackTimer.Stop()
	st.ackTimer = nil
	return flagACK
}

func (st *Stream) ackFlag() uint16 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.ackFlagLocked()
}

// acknowledge sends the owed ACK alone: no frame came to carry it within
// ackDelay.
func (st *Stream) acknowledge() {
	if st.ackFlag() != 0 {
		h := makeHeader(typeWindowUpdate, flagACK, st.id, 0)
		st.sess.w.post(&h) // if this fails, the session has ended
	}
}

// The rest is called by the read loop.

// grantSend adds a window update's delta to the send window.
func (st *Stream) grantSend(delta uint32) {
	st.mu.Lock()
	st.sendWin = uint32(min(uint64(st.sendWin)+uint64(delta), maxStreamID))
	st.mu.Unlock()
	notify(st.writeCh)
}

// applyFlags applies ACK and FIN, reporting whether they changed anything.
func (st *Stream) applyFlags(flags uint16) bool {
	if flags&(flagACK|flagFIN) == 0 {
		return false
	}
	st.mu.Lock()
	changed := false
	if flags&flagACK != 0 && st.holdsSlot {
		st.holdsSlot = false
		st.sess.releaseSlot()
		changed = true
	}
	fin := flags&flagFIN != 0 && !st.recvFIN
	if fin {
		st.recvFIN, changed = true, true
		if st.sentFIN {
			st.leaveLocked()
		}
	}
	st.mu.Unlock()
	if fin {
		st.wakeReader()
	}
	return changed
}

// resetByPeer applies the peer's RST.
func (st *Stream) resetByPeer() {
	st.mu.Lock()
	if st.resetErr == nil {
		st.resetErr, st.closing = errResetByPeer, true
		st.buf.release()
	}
	st.ackFlagLocked() // nothing to acknowledge any more
	st.leaveLocked()
	st.mu.Unlock()
	st.wakeReader()
	notify(st.writeCh)
}

// leaveLocked takes the stream out of the session's table and gives back
// what it held: its open slot and its window beyond the initial 256 KiB.
func (st *Stream) leaveLocked() {
	if st.gone {
		return
	}
	st.gone = true
	if st.holdsSlot {
		st.holdsSlot = false
		st.sess.releaseSlot()
	}
	if extra := st.window - initialWindow; extra > 0 {
		st.sess.budget.give(int64(extra))
	}
	st.sess.forget(st)
}
