package mux

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Session multiplexes streams over one connection. Each side runs one: the
// client opens odd stream IDs, the server even ones. A session owns one
// goroutine, its read loop, plus at most one short-lived flusher (write.go).
type Session struct {
	cfg    Config
	conn   net.Conn
	client bool
	log    *slog.Logger
	w      writer
	rd     connReader // owned by the read loop (read.go)

	dead     chan struct{} // closed when the session ends; wakes every blocked call
	readDone chan struct{} // closed when the read loop has returned

	mu          sync.Mutex
	err         error // why the session ended; nil while it runs
	streams     map[uint32]*Stream
	nextID      uint64
	localGoAway bool

	remoteGoAway atomic.Bool
	acceptCh     chan *Stream  // the accept backlog
	slots        chan struct{} // this side's opens waiting for an ACK (OpenBacklog)
	budget       budget

	pingMu  sync.Mutex
	pings   map[uint32]chan struct{}
	pingSeq uint32

	// Owned by the read loop.
	flood   floodGuard
	regions [][]byte // scratch: the buffer space a body is read into
	woke    bool     // a frame since the last yield woke a reader or writer
}

// Client starts the client side of a session over conn; cfg nil means
// DefaultConfig(). The session owns conn from now on and closes it when it
// ends.
func Client(conn net.Conn, cfg *Config) (*Session, error) { return newSession(conn, cfg, true) }

// Server starts the server side of a session over conn; see Client.
func Server(conn net.Conn, cfg *Config) (*Session, error) { return newSession(conn, cfg, false) }

func newSession(conn net.Conn, cfg *Config, client bool) (*Session, error) {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Session{
		cfg: *cfg, conn: conn, client: client, log: cfg.Logger,
		rd:       connReader{conn: conn},
		dead:     make(chan struct{}),
		readDone: make(chan struct{}),
		streams:  make(map[uint32]*Stream),
		nextID:   2,
		acceptCh: make(chan *Stream, cfg.AcceptBacklog),
		slots:    make(chan struct{}, cfg.OpenBacklog),
		budget:   budget{limit: cfg.SessionReceiveBudget},
		pings:    make(map[uint32]chan struct{}),
		flood:    newFloodGuard(cfg),
	}
	if client {
		s.nextID = 1
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.w = writer{
		conn: conn, timeout: cfg.WriteTimeout, maxFrame: cfg.MaxFrame,
		maxBatch: 4 * (cfg.MaxFrame + headerSize),
		dead:     s.dead, deadErr: s.Err, fail: s.fail,
	}
	go s.readLoop()
	return s, nil
}

// Open opens a stream. It sends the SYN (a window update frame) at once,
// without waiting for the peer's ACK, so data may follow immediately. ctx
// bounds the wait for one of OpenBacklog open slots (opens not yet ACKed).
func (s *Session) Open(ctx context.Context) (*Stream, error) {
	return s.OpenWith(ctx, nil)
}

// OpenWith opens a stream and sends first on it in the same frame as the
// SYN: a data frame with the SYN flag, written in one connection write
// together with whatever else was waiting (a dial in one write). It returns
// once first is written. If first is longer than MaxFrame or the initial
// window, the rest follows in further frames, and ctx also bounds the wait
// for window; on failure the stream is reset.
func (s *Session) OpenWith(ctx context.Context, first []byte) (*Stream, error) {
	if err := s.checkOpen(ctx); err != nil {
		return nil, err
	}
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.dead:
		return nil, s.Err()
	}
	st, err := s.register(len(first) > 0)
	if err != nil {
		s.releaseSlot()
		return nil, err
	}
	if len(first) == 0 {
		h := makeHeader(typeWindowUpdate, flagSYN, st.id, 0)
		err = s.w.post(&h)
	} else {
		_, err = st.write(ctx, nil, first) // the first frame carries the SYN
	}
	if err != nil {
		st.Reset()
		return nil, err
	}
	return st, nil
}

func (s *Session) checkOpen(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.Err(); err != nil {
		return err
	}
	if s.remoteGoAway.Load() {
		return ErrRemoteGoAway
	}
	return nil
}

// register creates an outbound stream, holding an open slot, in the table.
// synFirst says its SYN goes on its first data frame.
func (s *Session) register(synFirst bool) (*Stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	if s.nextID > maxStreamID {
		return nil, ErrStreamsExhausted
	}
	st := newStream(s, uint32(s.nextID))
	st.holdsSlot, st.synFirst = true, synFirst
	s.nextID += 2
	s.streams[st.id] = st
	return st, nil
}

// Accept returns the next stream the peer opened, waiting for one until ctx
// ends or the session does.
//
// The stream's ACK rides on the first frame the stream sends within
// ackDelay (10 ms) of Accept — typically the answer to the request that
// came with the SYN, so an open and its answer cost one frame each way —
// and goes alone when ackDelay passes first. It must not wait on the
// application for longer: an opener such as hashicorp/yamux closes its
// whole session when an ACK does not come within its StreamOpenTimeout,
// and it limits its un-ACKed opens to its backlog.
func (s *Session) Accept(ctx context.Context) (*Stream, error) {
	select {
	case st := <-s.acceptCh:
		st.owe()
		return st, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.dead:
		return nil, s.Err()
	}
}

// Ping sends a ping and returns the time until the answer came.
func (s *Session) Ping(ctx context.Context) (time.Duration, error) {
	ch := make(chan struct{})
	s.pingMu.Lock()
	s.pingSeq++
	id := s.pingSeq
	s.pings[id] = ch
	s.pingMu.Unlock()
	defer func() {
		s.pingMu.Lock()
		delete(s.pings, id)
		s.pingMu.Unlock()
	}()
	start := time.Now()
	h := makeHeader(typePing, flagSYN, 0, id)
	if err := s.w.post(&h); err != nil {
		return 0, err
	}
	select {
	case <-ch:
		return time.Since(start), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.dead:
		return 0, s.Err()
	}
}

// pong completes the ping with the given ID, if one is waiting.
func (s *Session) pong(id uint32) {
	s.pingMu.Lock()
	defer s.pingMu.Unlock()
	if ch, ok := s.pings[id]; ok {
		close(ch)
		delete(s.pings, id)
	}
}

// GoAway tells the peer this side accepts no more streams; SYNs that arrive
// after it are answered with RST. Streams already open carry on. Note that
// go-yamux (libp2p) ends its whole session when it receives a go away.
func (s *Session) GoAway() error {
	s.mu.Lock()
	s.localGoAway = true
	s.mu.Unlock()
	h := makeHeader(typeGoAway, 0, 0, goAwayNormal)
	return s.w.post(&h)
}

// Close ends the session: every blocked call on it and its streams returns at
// once with ErrSessionClosed (streams first return what they had buffered).
// It lets the write in flight end, writes the frames still queued (a
// stream's FIN) and a go away — best effort, all within a short deadline —
// closes the connection and waits for the read loop to return. Closing
// again does nothing.
func (s *Session) Close() error {
	code := goAwayNormal
	s.shutdown(ErrSessionClosed, &code)
	<-s.readDone
	s.w.flushers.Wait()
	return nil
}

// fail ends the session after a write error.
func (s *Session) fail(err error) { s.shutdown(err, nil) }

// shutdown ends the session with err, once: it records err, wakes every
// blocked call by closing dead, writes a go away with goAway's code if there
// is one and the connection is free, and closes the connection. It reports
// whether this call ended the session.
func (s *Session) shutdown(err error, goAway *uint32) bool {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return false
	}
	s.err = err
	streams := s.streams
	s.streams = map[uint32]*Stream{}
	s.mu.Unlock()
	close(s.dead) // wakes every waiting Read and Write at once
	for _, st := range streams {
		st.wakeReader() // and every parked reader
	}
	var h *header
	if goAway != nil {
		g := makeHeader(typeGoAway, 0, 0, *goAway)
		h = &g
	}
	stuck := s.w.close(err, h)
	s.closeConn(stuck || goAway == nil)
	s.logEnd(err)
	return true
}

// closeConn closes the connection. When it may be stuck, the one under a
// TLS connection is closed first, so TLS does not wait (up to 5 s) trying to
// send its close alert.
func (s *Session) closeConn(stuck bool) {
	if nc, ok := s.conn.(interface{ NetConn() net.Conn }); ok && stuck {
		nc.NetConn().Close()
	}
	s.conn.Close()
}

func (s *Session) logEnd(err error) {
	var ga *GoAwayError
	switch {
	case errors.As(err, &ga) && ga.Code == goAwayNormal: // the peer closed; its owner logs why
		s.log.Debug("mux session ended", "err", err)
	case errors.Is(err, ErrProtocol):
		s.log.Warn("mux session ended", "err", err)
	case errors.Is(err, ErrSessionClosed), errors.Is(err, io.EOF):
		s.log.Debug("mux session ended", "err", err)
	default:
		s.log.Info("mux session ended", "err", err)
	}
}

// Done returns a channel closed when the session ends, by Close or failure.
func (s *Session) Done() <-chan struct{} { return s.dead }

// Err returns why the session ended (ErrSessionClosed after Close; an error
// matching ErrConnLost, ErrWriteTimeout, ErrRemoteGoAway or ErrProtocol
// otherwise), or nil while it runs. It takes no lock: shutdown sets s.err
// before it closes dead and never changes it after, and every stream's
// blocked call asks for it at once when the session ends.
func (s *Session) Err() error {
	if !s.isDead() {
		return nil
	}
	return s.err
}

// NumStreams returns how many streams are in the session's table: open in
// at least one direction, or waiting in the accept backlog.
func (s *Session) NumStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// LocalAddr returns the connection's local address.
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr returns the connection's remote address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// isDead reports whether the session has ended.
func (s *Session) isDead() bool { return closed(s.dead) }

// forget removes st from the table.
func (s *Session) forget(st *Stream) {
	s.mu.Lock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
	}
	s.mu.Unlock()
}

// releaseSlot gives back the open slot of a stream that was ACKed or left.
func (s *Session) releaseSlot() {
	select {
	case <-s.slots:
	default:
	}
}

// lookup returns the stream with the given ID, or nil.
func (s *Session) lookup(id uint32) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}
