package mux

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
)

// The write path has no send goroutine. A goroutine that has a frame to send
// copies it (header and body together) into the pending batch. If no one is
// writing, it takes the writer role and writes the batch to the connection
// itself, in one Write. If someone is, it leaves the frame: when the write in
// flight ends, the waiting callers wake and one of them writes the whole
// pending batch, every frame that piled up meanwhile, in one Write. A caller
// returns once the batch holding its frame is written (or the session ends).
// Frames nobody waits for (control frames: window updates, pongs, RSTs) are
// written by whoever holds the role when they are queued, before it lets go.
//
// A busy session gathers. Goroutines that the runtime makes ready together
// (a poll that found several sockets readable) send one after another, and
// each would write alone: one system call, and one wake-up of the peer's read
// loop, per frame. So once frames of several senders have met in one write,
// the next gatherWrites callers that find the connection free yield once
// (runtime.Gosched) before they write: the goroutines ready beside them run,
// add their frames to the same pending batch, and one write carries them
// all. A session where frames never meet, such as one tunnel's round trips,
// never yields and pays nothing for this.
//
// The read loop never writes: a frame it must send (a pong, an RST for a
// refused stream) goes to the current writer, or, when there is none, to a
// short-lived flusher goroutine that takes the writer role, writes and exits.
// At most one exists at a time, because it holds the role. Writing from the
// read loop itself could deadlock two peers whose read loops each wait for
// the other to read (net.Pipe, or TCP with both directions' buffers full).

// maxPendingPongs bounds the ping answers waiting for a writer; a peer that
// pings faster than we can answer loses the excess answers (and soon hits
// Config.PingLimit).
const maxPendingPongs = 16

// goAwayTimeout bounds the best-effort go away written when a session ends.
const goAwayTimeout = 250 * time.Millisecond

// gatherWrites is how many writes, after frames of several senders last met
// in one, yield first so that more can join (see the top of the file).
const gatherWrites = 16

// maxPooledBatch is the largest batch buffer kept for reuse.
const maxPooledBatch = 1 << 20

var batchPool = sync.Pool{New: func() any { return &batch{buf: make([]byte, 0, 64<<10)} }}

// batch is a run of encoded frames written to the connection in one Write.
// Batches are pooled: the last of the writer and the batch's waiters to let
// go of it puts it back.
type batch struct {
	buf     []byte
	direct  []byte        // instead of buf: one frame written from its sender's buffer (sendFramed)
	done    chan struct{} // closed once written; made when someone waits
	turn    chan struct{} // closed when a writer hands the connection to this batch's waiters
	handed  bool          // turn is closed
	written bool
	err     error
	waiters int // callers that wait for this batch and will write it if need be
	pongs   int
}

// recycle puts b back in the pool once it is written and no one waits.
func (b *batch) recycle() {
	if !b.written || b.waiters > 0 {
		return
	}
	buf := b.buf[:0]
	if cap(buf) > maxPooledBatch {
		buf = nil
	}
	*b = batch{buf: buf}
	batchPool.Put(b)
}

func (b *batch) doneChan() <-chan struct{} {
	if b.done == nil {
		b.done = make(chan struct{})
	}
	return b.done
}

// writer is a session's write side (see the comment at the top of the file).
type writer struct {
	conn     net.Conn
	timeout  time.Duration // Config.WriteTimeout
	maxBatch int           // pending bytes beyond which data senders wait
	maxFrame int           // Config.MaxFrame
	dead     <-chan struct{}
	deadErr  func() error // the session's error once dead is closed
	fail     func(error)  // ends the session after a write error

	mu       sync.Mutex
	writing  bool   // someone holds the writer role
	inflight *batch // the batch being written (non-nil while writing, except at close)
	pending  *batch // frames waiting for the next write
	err      error  // once set, nothing more is written
	failErr  error  // a write error to report through fail once unlocked
	gather   int    // writes left that yield first (gatherWrites)
	flushers sync.WaitGroup

	// Touched only by the holder of the writer role.
	noDeadline bool      // the connection refused SetWriteDeadline
	refreshAt  time.Time // when the write deadline needs moving again
}

// unlock releases w.mu and then reports a write failure found under it.
func (w *writer) unlock() {
	err := w.failErr
	w.failErr = nil
	w.mu.Unlock()
	if err != nil {
		w.fail(err)
	}
}

// sendData sends p on stream id as data frames of at most maxFrame bytes,
// the first with flags, and returns once they are written.
func (w *writer) sendData(id uint32, flags uint16, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	frames := (len(p) + w.maxFrame - 1) / w.maxFrame
	w.mu.Lock()
	if err := w.roomLocked(len(p) + frames*headerSize); err != nil {
		w.unlock()
		return err
	}
	var b *batch
	for len(p) > 0 {
		n := min(len(p), w.maxFrame)
		h := makeHeader(typeData, flags, id, uint32(n))
		b = w.appendLocked(&h, p[:n])
		p, flags = p[n:], 0
	}
	b.waiters++
	return w.waitLocked(b)
}

// sendFramed sends frame[headerSize:] on stream id as one data frame with
// flags, writing the header into frame[:headerSize], and returns once it is
// written. If no one is writing and nothing is queued, the caller writes
// the frame from its own buffer; otherwise it is copied and queued as
// sendData does.
func (w *writer) sendFramed(id uint32, flags uint16, frame []byte) error {
	w.mu.Lock()
	if w.err != nil || w.writing || w.pending != nil {
		w.mu.Unlock()
		return w.sendData(id, flags, frame[headerSize:])
	}
	h := makeHeader(typeData, flags, id, uint32(len(frame)-headerSize))
	copy(frame, h[:])
	b := batchPool.Get().(*batch)
	b.direct = frame
	b.waiters++
	w.pending = b // taken at once below, under the same lock: nothing is appended to it
	return w.waitLocked(b)
}

// post queues a control frame and writes it at once if no one is writing,
// else leaves it to the writer. It does not wait for a writer in flight.
func (w *writer) post(h *header) error {
	w.mu.Lock()
	if w.err == nil {
		w.appendLocked(h, nil)
		if !w.writing {
			w.runLocked(w.takeLocked())
		}
	}
	err := w.err
	w.unlock()
	return err
}

// postFromLoop queues a frame from the read loop, which must never block on
// the connection: the frame goes to the writer in flight or to a new
// flusher. A pong beyond maxPendingPongs is dropped.
func (w *writer) postFromLoop(h *header, pong bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || (pong && w.pending != nil && w.pending.pongs >= maxPendingPongs) {
		return
	}
	b := w.appendLocked(h, nil)
	if pong {
		b.pongs++
	}
	if !w.writing {
		w.flushers.Add(1)
		go w.flusher(w.takeLocked())
	}
}

// flusher writes frames the read loop queued while no one was writing.
func (w *writer) flusher(b *batch) {
	defer w.flushers.Done()
	w.mu.Lock()
	w.runLocked(b)
	w.unlock()
}

// roomLocked waits until the pending batch can take n more bytes (an empty
// batch takes anything), writing the pending batch itself if no one is.
func (w *writer) roomLocked(n int) error {
	for {
		switch {
		case w.err != nil:
			return w.err
		case w.pending == nil || len(w.pending.buf)+n <= w.maxBatch:
			return nil
		case !w.writing:
			w.runLocked(w.takeLocked())
		default:
			if err := w.awaitLocked(); err != nil {
				return err
			}
		}
	}
}

// waitLocked waits until b is written, taking the writer role when the
// connection is free and b is next. It releases w.mu.
func (w *writer) waitLocked(b *batch) error {
	err := w.waitWrittenLocked(b)
	b.waiters--
	b.recycle()
	w.unlock()
	return err
}

func (w *writer) waitWrittenLocked(b *batch) error {
	yielded := false
	for !b.written && w.err == nil {
		if !w.writing {
			if w.gather > 0 && !yielded && b.direct == nil {
				w.gather--
				yielded = true
				w.mu.Unlock()
				runtime.Gosched() // b stays pending: senders ready beside us join it
				w.mu.Lock()
				continue
			}
			w.runLocked(w.takeLocked()) // b is the pending batch
			continue
		}
		if err := w.awaitOwnLocked(b); err != nil {
			return err
		}
	}
	if b.err != nil || !b.written {
		return w.err
	}
	return nil
}

// awaitLocked waits for the write in flight to end, releasing w.mu meanwhile.
// Frames already queued were copied, so returning early at the session's end
// leaves no one reading a caller's buffer.
func (w *writer) awaitLocked() error {
	return w.sleepLocked(w.inflight.doneChan(), nil)
}

// awaitOwnLocked waits until b is written or its waiters are handed the
// connection, releasing w.mu meanwhile.
func (w *writer) awaitOwnLocked(b *batch) error {
	if b.handed { // one of b's waiters holds the role now, and b goes next
		return w.sleepLocked(b.doneChan(), nil)
	}
	if b.turn == nil {
		b.turn = make(chan struct{})
	}
	return w.sleepLocked(b.doneChan(), b.turn)
}

// sleepLocked releases w.mu until one of the channels is closed (a nil one
// never is) or the session ends, and takes it again.
func (w *writer) sleepLocked(a, b <-chan struct{}) error {
	w.unlock()
	var err error
	select {
	case <-a:
	case <-b:
	case <-w.dead:
		err = w.deadErr()
	}
	w.mu.Lock()
	return err
}

// appendLocked encodes a frame onto the pending batch.
func (w *writer) appendLocked(h *header, body []byte) *batch {
	b := w.pending
	if b == nil {
		b = batchPool.Get().(*batch)
		w.pending = b
	}
	b.buf = append(append(b.buf, h[:]...), body...)
	return b
}

// takeLocked takes the writer role and puts the pending batch in flight.
func (w *writer) takeLocked() *batch {
	b := w.pending
	w.pending, w.inflight, w.writing = nil, b, true
	return b
}

// runLocked writes b, which is in flight, then keeps writing the batches
// that pile up meanwhile — so a busy session's frames go out without a
// goroutine switch per batch, and each waiter wakes once, when its own
// batch is written. After maxDrain batches with waiters it hands the
// connection to the next batch's waiters (closing its turn), so its own
// caller is not held up for long. Called and returns with w.mu held; drops
// it while writing.
func (w *writer) runLocked(b *batch) {
	for drained := 0; ; {
		out := b.buf
		if b.direct != nil {
			out = b.direct
		}
		w.mu.Unlock()
		err := w.write(out)
		w.mu.Lock()
		if b.waiters > 1 || w.pending != nil && w.pending.waiters > 0 { // senders met: the session is busy
			w.gather = gatherWrites
		}
		w.finishLocked(b, err)
		next := w.pending
		if w.err != nil || next == nil || next.waiters > 0 && drained >= maxDrain {
			w.writing = false
			if next != nil && next.turn != nil && !next.handed {
				next.handed = true
				close(next.turn)
			}
			return
		}
		if next.waiters > 0 {
			drained++
		}
		b = w.takeLocked()
	}
}

// maxDrain bounds the batches with waiters a writer writes after its own
// before it hands the connection on.
const maxDrain = 8

// finishLocked records the end of the write of b and wakes its waiters.
func (w *writer) finishLocked(b *batch, err error) {
	w.inflight = nil
	b.written, b.err = true, err
	if b.done != nil {
		close(b.done)
	}
	if err != nil && w.err == nil {
		w.err, w.failErr = err, err
	}
	b.recycle()
}

// write writes buf to the connection in one Write, within the write timeout.
func (w *writer) write(buf []byte) error {
	w.extendDeadline()
	_, err := w.conn.Write(buf)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w after %v: %w", ErrWriteTimeout, w.timeout, err)
	}
	return fmt.Errorf("%w: write: %w", ErrConnLost, err)
}

// extendDeadline moves the connection's write deadline to now+timeout when a
// quarter of the timeout has passed since it was last moved, so every write
// gets at least three quarters of it without a call per write.
func (w *writer) extendDeadline() {
	if w.noDeadline {
		return
	}
	now := time.Now()
	if now.Before(w.refreshAt) {
		return
	}
	if err := w.conn.SetWriteDeadline(now.Add(w.timeout)); err != nil {
		w.noDeadline = true
		return
	}
	w.refreshAt = now.Add(w.timeout / 4)
}

// close stops all writing with err. With goAway set (a local Close), it
// first lets the write in flight end, then writes the frames still queued —
// a stream's FIN, a window update — and goAway after them, all within
// goAwayTimeout, best effort: what the session accepted before it closed
// reaches the peer. It reports whether the connection looks stuck (a write
// still in flight, or the last write failed), in which case TLS should not
// try to send its own close alert.
func (w *writer) close(err error, goAway *header) (stuck bool) {
	deadline := time.Now().Add(goAwayTimeout)
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	if goAway != nil && w.writing && w.inflight != nil {
		done := w.inflight.doneChan()
		w.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
		w.mu.Lock()
	}
	busy := w.writing
	w.writing = true // the role is never released again
	var queued []byte
	if w.pending != nil { // detached: its waiters return w.err and never recycle it
		queued = w.pending.buf
		w.pending = nil
	}
	w.mu.Unlock()
	if busy || goAway == nil {
		return busy
	}
	if w.conn.SetWriteDeadline(deadline) != nil {
		return false // without a deadline the write could hang: skip it
	}
	_, werr := w.conn.Write(append(queued, goAway[:]...))
	return werr != nil
}
