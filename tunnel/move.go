package tunnel

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Moving a tunnel to another agent. An agent that is being replaced on its
// node — a rollout: SIGTERM to the old agent, a new one started beside it —
// hands its open tunnels to its successor instead of closing them:
// kube-apiserver's keep-alive connections, a webhook's HTTP/2 connection,
// a running exec or logs -f all go on through the new agent, and the old
// one exits as soon as it has handed them over. The node side's TCP
// connection itself moves, as a file descriptor passed over a unix socket
// on the node (handoff.go); the frontend connection never notices.
//
// The move of one tunnel, dial D, carried by the old agent's stream S:
//
//  1. The old agent stops reading the node's socket (a read deadline in
//     the past), sends what it had read on S, and asks the server on its
//     control stream to move D (a move frame).
//  2. The server stops reading the frontend connection the same way, sends
//     what it had read on S, and then FIN on S: nothing more will come.
//  3. The old agent writes everything up to that FIN to the node socket and
//     sends FIN on S itself; the server writes everything up to it to the
//     frontend connection. Every byte read so far has now arrived; what
//     either peer sends from here waits in its own socket's buffer.
//  4. The old agent passes the node socket to its successor, which opens a
//     stream to the same server with an adopt frame for D. The server
//     answers as it answers a dial and carries D on the new stream.
//
// Either side refuses by resetting S: the server when D is not one of the
// old agent's tunnels or its frontend had already finished sending, the
// agent when the server's answer does not come. Anything that fails closes
// the tunnel as the drain would have; nothing is ever half delivered.

// Move states.
const (
	moveNone      int32 = iota
	moveStopping        // the socket's reader is stopped or stopping
	moveAbandoned       // the move failed before it began: the tunnel goes on as before
)

// mover lets startPipe stop a tunnel for a move. Each half of the tunnel
// checks it when it ends (pausing): the half that reads the socket pauses
// on the read deadline pause sets, the half that reads the stream on the
// peer's FIN; startPipe reports moved when both paused.
type mover struct {
	sock      net.Conn // the node's connection on the agent, the frontend client's on the server
	st        net.Conn // the tunnel's stream
	initiator bool     // the agent's end: the server's FIN answers its move frame

	state      atomic.Int32
	deadline   sync.Mutex    // orders pause's read deadline after idleDeadline's
	sockEnded  chan struct{} // closed when the half reading sock has ended
	sockPaused atomic.Bool   // it paused (set before sockEnded closes)
	done       chan struct{} // the agent's: closed by carry once the tunnel has stopped
}

func newMover(sock, st net.Conn, initiator bool) *mover {
	m := &mover{sock: sock, st: st, initiator: initiator, sockEnded: make(chan struct{})}
	if initiator { // only the agent's move waits for its tunnel to stop (handoff.go moveTunnel)
		m.done = make(chan struct{})
	}
	return m
}

func (m *mover) stream() net.Conn { return m.st }

// pausing is called by each half of m's tunnel as it ends, having read src
// until err: it reports whether the half stopped for the move, in which
// case it must close nothing. The server's socket half then sends its FIN
// on the stream: the answer to the agent's move frame (step 2).
func (m *mover) pausing(src net.Conn, err error) bool {
	if m == nil {
		return false
	}
	stopping := m.state.Load() == moveStopping
	if src != m.sock {
		return stopping && err == nil // the peer's FIN (steps 2 and 3)
	}
	paused := stopping && isTimeout(err)
	m.sockPaused.Store(paused)
	close(m.sockEnded)
	if paused && !m.initiator {
		m.st.(closeWriter).CloseWrite()
	}
	return paused
}

// claim marks the tunnel as moving, once; the drain leaves it alone then.
func (m *mover) claim() bool {
	return m.state.CompareAndSwap(moveNone, moveStopping)
}

// pause, after the claim, stops reading the socket and waits for its
// reader: it reports whether the reader paused, so that the move can go
// on. A reader that ended first (the socket's EOF, a failure) abandons the
// move.
func (m *mover) pause() bool {
	m.deadline.Lock()
	err := m.sock.SetReadDeadline(time.Unix(1, 0))
	m.deadline.Unlock()
	if err != nil { // a frontend that cannot stop reading
		m.state.Store(moveAbandoned)
		return false
	}
	<-m.sockEnded
	if !m.sockPaused.Load() {
		m.state.Store(moveAbandoned)
		return false
	}
	return true
}

// idleDeadline sets the read deadline of sock, the tunnel's socket, for
// the copy path's own wait (half.armIdle) and reports true; or, once the
// tunnel is moving, leaves the move's deadline alone and reports false. A
// nil mover always sets it.
func (m *mover) idleDeadline(sock net.Conn, t time.Time) bool {
	if m == nil {
		sock.SetReadDeadline(t)
		return true
	}
	m.deadline.Lock()
	defer m.deadline.Unlock()
	if m.state.Load() == moveStopping {
		return false
	}
	sock.SetReadDeadline(t)
	return true
}

// The server's end.

// moving is one of the server's open tunnels, as the agents carrying it
// see it: by dial ID in Server.moves.
type moving struct {
	node string // the node whose agents may move it

	mu      sync.Mutex
	agent   *agentConn // the agent carrying it now
	m       *mover     // the current run's
	over    bool       // carry has returned: no adoption is taken
	adopted chan *streamConn
}

// carry carries frontend connection c's tunnel, and while the tunnel
// moves from agent to agent, again on each new stream; it returns at once
// (startPipe) and calls done when the tunnel has ended. A tunnel whose
// transport cannot move (SSH) is piped once.
func (s *Server) carry(c net.Conn, tunnel net.Conn, done func()) {
	sc, ok := tunnel.(*streamConn)
	if !ok || !sc.agent.moves {
		startPipe(s.workers, c, tunnel, s.metrics.toNode, s.metrics.fromNode, nil, func(bool) { done() })
		return
	}
	mv := &moving{node: sc.agent.node, adopted: make(chan *streamConn, 1)}
	s.moves.Store(sc.id, mv)
	s.carryOn(c, sc, mv, func() {
		s.moves.Delete(sc.id)
		mv.mu.Lock()
		mv.over = true
		mv.mu.Unlock()
		select {
		case late := <-mv.adopted:
			abort(late)
		default:
		}
		done()
	})
}

// carryOn pipes c and its tunnel's current stream sc, and after a move
// waits for the tunnel's adoption on a goroutine of its own.
func (s *Server) carryOn(c net.Conn, sc *streamConn, mv *moving, done func()) {
	m := newMover(c, sc, false)
	mv.mu.Lock()
	mv.agent, mv.m = sc.agent, m
	mv.mu.Unlock()
	startPipe(s.workers, c, sc, s.metrics.toNode, s.metrics.fromNode, m, func(moved bool) {
		if !moved {
			if m.state.Load() == moveStopping {
				s.log.Info("tunnel ended while it moved", "dial", sc.id, "node", mv.node)
			}
			done()
			return
		}
		go func() {
			if next := s.awaitAdoption(c, sc, mv); next != nil {
				s.carryOn(c, next, mv, done)
				return
			}
			done()
		}()
	})
}

// awaitAdoption waits for the stream that carries moved tunnel sc on, and
// returns it; or closes c and returns nil if none comes in time.
func (s *Server) awaitAdoption(c net.Conn, sc *streamConn, mv *moving) *streamConn {
	wait := time.NewTimer(s.cfg.HandshakeTimeout)
	defer wait.Stop()
	select {
	case next := <-mv.adopted:
		s.metrics.moves.Inc()
		s.log.Debug("tunnel moved", "dial", sc.id, "node", mv.node, "from", sc.agent.sess.Peer().Subject, "draining", sc.agent.draining.Load())
		return next
	case <-wait.C:
		s.log.Warn("moved tunnel not adopted in time; closing it", "dial", sc.id, "node", mv.node, "timeout", s.cfg.HandshakeTimeout)
	case <-s.ctx.Done():
	}
	c.Close()
	return nil
}

// moveRequested answers agent a's move frame for dial id: it stops the
// tunnel's frontend side (step 2), or resets its stream to refuse.
func (s *Server) moveRequested(a *agentConn, id uint64) {
	v, ok := s.moves.Load(id)
	if !ok {
		s.log.Debug("move of a tunnel that is not open", "dial", id, "node", a.node)
		return
	}
	mv := v.(*moving)
	mv.mu.Lock()
	m, carrier := mv.m, mv.agent
	mv.mu.Unlock()
	if carrier != a {
		s.log.Warn("agent asked to move a tunnel it does not carry", "dial", id, "node", a.node)
		return
	}
	if !m.claim() { // a repeated request: no goroutine for it
		return
	}
	go func() {
		if !m.pause() {
			s.log.Info("tunnel cannot move: its frontend side has ended or cannot pause", "dial", id, "node", a.node)
			abort(m.st)
		}
	}()
}

// acceptAdopts serves the streams agent a opens, each an adoption of a
// moved tunnel, one at a time, until the session ends. The agent opens
// them one at a time too (handoff.go), so the session's small accept
// backlog holds them.
func (s *Server) acceptAdopts(a *agentConn) {
	for {
		st, err := a.sess.Accept(context.Background())
		if err != nil {
			return
		}
		s.adopt(a, st)
	}
}

// adopt answers one adopt stream: dial ID D of a tunnel that an agent of
// the same node is moving (step 4).
func (s *Server) adopt(a *agentConn, st net.Conn) {
	st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	payload, err := readFrame(st, frameAdopt)
	var id uint64
	if err == nil {
		id, err = decodeDialID(payload)
	}
	if err != nil {
		s.log.Warn("bad adopt stream from agent", "node", a.node, "err", err)
		abort(st)
		return
	}
	refuse := func(why string) {
		s.log.Info("adoption refused", "dial", id, "node", a.node, "reason", why)
		st.Write(appendDialResponse(nil, dialResponse{Result: ResultError, Message: why}))
		st.Close()
	}
	v, ok := s.moves.Load(id)
	if !ok {
		refuse("no such tunnel")
		return
	}
	mv := v.(*moving)
	mv.mu.Lock()
	defer mv.mu.Unlock()
	switch {
	case mv.node != a.node:
		refuse("the tunnel belongs to another node")
		return
	case mv.over || mv.m.state.Load() != moveStopping || len(mv.adopted) > 0:
		refuse("the tunnel is not moving")
		return
	case !s.tunnels.begin(true):
		refuse("server stopped")
		return
	}
	if _, err := st.Write(appendDialResponse(nil, dialResponse{Result: ResultOK})); err != nil {
		s.tunnels.end()
		abort(st)
		return
	}
	st.SetDeadline(time.Time{})
	a.streams.Add(1)
	s.metrics.streamsOpen.Inc()
	mv.adopted <- &streamConn{Conn: st, agent: a, id: id, open: s.metrics.streamsOpen, end: s.tunnels.end}
}
