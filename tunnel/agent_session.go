package tunnel

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// agentSession is a registered session to one server replica.
type agentSession struct {
	sess    Session
	ctrl    net.Conn
	ctrlMu  sync.Mutex             // orders the agent's writes on ctrl
	id      string                 // the replica's server ID
	addr    string                 // where the agent reached it
	moves   bool                   // the server takes tunnels handed between agents (move.go)
	goodbye atomic.Pointer[string] // why the server said it ends the session, if it did
	streams inflight               // dials and tunnels in progress
	open    tunnelSet              // open tunnels
}

// tell writes a frame on s's control stream.
func (s *agentSession) tell(frame []byte, timeout time.Duration) error {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	s.ctrl.SetWriteDeadline(time.Now().Add(timeout))
	defer s.ctrl.SetWriteDeadline(time.Time{})
	_, err := s.ctrl.Write(frame)
	return err
}

// connect dials addr and registers, naming the replicas the agent already
// holds; on success the session counts as held, and the address the
// replica advertises is remembered.
func (a *Agent) connect(ctx context.Context, addr string) (*agentSession, error) {
	hctx, cancel := context.WithTimeout(ctx, a.cfg.HandshakeTimeout)
	defer cancel()
	sess, err := a.dialSession(hctx, addr)
	if err != nil {
		return nil, err
	}
	ctrl, reply, err := a.hello(hctx, sess)
	if err == nil {
		a.update(func() {
			if _, ok := a.held[reply.ServerID]; ok { // defensive: the hello named every replica held, and only Run adds one
				err = &RejectedError{Reason: "already held", ServerID: reply.ServerID, Held: true}
				return
			}
			a.held[reply.ServerID] = reply.ServerCount
			a.remember(reply.ServerID, reply.Address)
			a.rememberPeers(reply.ServerID, reply.Peers)
		})
	}
	if err != nil {
		sess.Close()
		return nil, err
	}
	_, want := a.Servers()
	a.log.Info("registered", "node", a.cfg.NodeName, "server_id", reply.ServerID, "server", addr, "replicas", want)
	if a.cfg.OnRegistered != nil {
		a.cfg.OnRegistered()
	}
	return &agentSession{sess: sess, ctrl: ctrl, id: reply.ServerID, addr: addr, moves: reply.Moves}, nil
}

// dialSession connects to the server over the configured transport.
func (a *Agent) dialSession(ctx context.Context, addr string) (Session, error) {
	if c := a.cfg.SSH; c != nil {
		user := c.User
		if user == "" {
			user = a.cfg.NodeName
		}
		return dialSSH(ctx, addr, c, user)
	}
	return dialTLS(ctx, addr, a.tls, a.session)
}

// runSession serves a registered session until it ends.
func (a *Agent) runSession(ctx context.Context, s *agentSession) {
	defer a.wg.Done()
	start := time.Now()
	err := a.serve(ctx, s)
	if ctx.Err() == nil {
		reason := "none given (the server's log says why)"
		if r := s.goodbye.Load(); r != nil {
			reason = *r
		}
		a.log.Warn("session ended", "server", s.addr, "server_id", s.id, "reason", reason, "err", err)
	}
	if time.Since(start) >= a.cfg.StableAfter {
		a.sessionEnd.Store(endStable)
	} else {
		a.sessionEnd.Store(endEarly)
	}
	a.update(func() { delete(a.held, s.id) }) // after sessionEnd: this wakes Run
}

// serve runs a registered session until it ends: it accepts the server's
// dial streams, follows the replica count on the control stream, keeps the
// session alive and, when ctx ends, drains it.
func (a *Agent) serve(ctx context.Context, s *agentSession) error {
	sess := s.sess
	a.update(func() { a.sessions[s.id] = s })
	defer a.update(func() { delete(a.sessions, s.id) })
	drained := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { defer close(drained); a.drain(s) })
	defer func() {
		if !stop() { // the drain started: it ends with the session, closed below
			<-drained
		}
	}()
	stopKeepalive := startKeepalive(sess, a.cfg.KeepaliveInterval, a.cfg.KeepaliveTimeout, a.metrics.keepaliveRTT, a.log.With("server", s.addr, "server_id", s.id))
	control := make(chan struct{})
	defer func() { sess.Close(); <-control; stopKeepalive() }()
	go func() {
		defer close(control)
		a.followControl(s)
	}()
	for {
		st, err := sess.Accept(context.Background())
		if err != nil {
			return err
		}
		if !s.streams.begin(true) { // the drain ended with the last tunnel
			a.respond(st, dialResponse{Result: ResultError, Message: "agent drained"})
			st.Close()
			continue
		}
		a.wg.Add(1)
		// A draining agent still dials: its context has ended, but the
		// dial's own timeout and the server's hang-up bound it.
		a.workers.spawn(func() {
			a.serveStream(context.WithoutCancel(ctx), s, st, func() {
				s.streams.end()
				a.wg.Done()
			})
		})
	}
}

// followControl reads s's control stream after registration: each
// replica-count frame is the count s's replica reports from then on, and a
// goodbye frame says why the server is ending the session. It returns when
// the stream ends (with the session).
func (a *Agent) followControl(s *agentSession) {
	for {
		typ, payload, err := readAnyFrame(s.ctrl)
		if err != nil {
			return
		}
		if typ == frameGoodbye {
			if reason := decodeGoodbye(payload); reason != "" {
				s.goodbye.Store(&reason)
				a.log.Info("the server is ending the session", "server", s.addr, "server_id", s.id, "reason", reason)
			}
			continue
		}
		if typ != frameReplicas {
			continue
		}
		r, err := decodeReplicaCount(payload)
		if err != nil {
			a.log.Warn("bad replica count from the server", "err", err)
			continue
		}
		a.log.Info("server replica count changed", "server_id", s.id, "replicas", r.ServerCount)
		a.update(func() {
			if _, ok := a.held[s.id]; ok {
				a.held[s.id] = r.ServerCount
			}
			a.rememberPeers(s.id, r.Peers)
		})
	}
}

// endedBeforeReply names the likely causes of a session the server ended
// before it answered the hello, and so before it could say why.
const endedBeforeReply = "the server ended the session before answering the hello; over TLS 1.3 a refused client certificate shows only here: " +
	"signed by a CA other than the server's --agent-ca-file, expired, or not for client auth. Otherwise the server restarted or hit a limit; its log says which"

// hello opens the control stream and registers; the stream stays open for
// the session's life, and hello returns it.
func (a *Agent) hello(ctx context.Context, sess Session) (net.Conn, HelloReply, error) {
	h := Hello{Version: ProtocolVersion, MinVersion: MinProtocolVersion, Node: a.cfg.NodeName, IPs: a.cfg.NodeIPs,
		PodCIDRs: a.cfg.PodCIDRs, DefaultRoute: a.cfg.DefaultRoute, Agent: "tunnel-agent", Held: a.heldIDs()}
	hello, err := appendJSONFrame(nil, frameHello, h)
	if err != nil {
		return nil, HelloReply{}, err
	}
	ctrl, err := sess.Open(ctx, hello) // the control stream opens with the hello
	if err != nil {
		return nil, HelloReply{}, fmt.Errorf("opening the control stream with the hello: %w (%s)", err, endedBeforeReply)
	}
	if d, ok := ctx.Deadline(); ok {
		ctrl.SetDeadline(d)
	}
	payload, err := readFrame(ctrl, frameHelloReply)
	if err != nil {
		return nil, HelloReply{}, fmt.Errorf("reading hello reply: %w (%s)", err, endedBeforeReply)
	}
	reply, err := decodeHelloReply(payload)
	if err != nil {
		return nil, reply, err
	}
	if reply.Error == "" && (reply.Version < MinProtocolVersion || reply.Version > ProtocolVersion) {
		return nil, reply, fmt.Errorf("server picked protocol version %d; this agent speaks %d to %d", reply.Version, MinProtocolVersion, ProtocolVersion)
	}
	if reply.Error != "" {
		return nil, reply, &RejectedError{Reason: reply.Error, ServerID: reply.ServerID, Held: reply.Held} // Run logs it
	}
	ctrl.SetDeadline(time.Time{})
	return ctrl, reply, nil
}
