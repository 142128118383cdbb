package tunnel

import (
	"net"
	"time"
)

// The server's writes on an agent's control stream: the hello reply that
// registers it, then replica counts (ha.go) and a goodbye. agentConn.ctrlMu
// orders them.

// welcome sends a registered agent its hello reply, with the replica
// count, and from then on lets replicasChanged reach it on ctrl. Both hold
// a's control lock while they read the count and write, so the agent's
// last word is the latest count.
func (s *Server) welcome(a *agentConn, ctrl net.Conn) error {
	a.ctrlMu.Lock()
	defer a.ctrlMu.Unlock()
	ctrl.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer ctrl.SetDeadline(time.Time{})
	err := encodeJSONFrame(ctrl, frameHelloReply, HelloReply{Version: a.version, ServerID: s.cfg.ID,
		ServerCount: s.replicaCount(), Address: s.cfg.AdvertiseAddress, Peers: s.peers(), Moves: a.moves})
	if err == nil {
		a.ctrl = ctrl
	}
	return err
}

// tell writes a frame with msg() as its payload on a's control stream,
// once the hello reply has gone out (before that, there is no stream to
// write on, and the reply itself carries what the agent must know).
func (s *Server) tell(a *agentConn, typ byte, msg func() any, timeout time.Duration) {
	a.ctrlMu.Lock()
	defer a.ctrlMu.Unlock()
	if a.ctrl == nil {
		return
	}
	a.ctrl.SetWriteDeadline(time.Now().Add(timeout))
	defer a.ctrl.SetWriteDeadline(time.Time{})
	if err := encodeJSONFrame(a.ctrl, typ, msg()); err != nil {
		s.log.Warn("could not write to an agent's control stream", "node", a.node, "frame", typ, "err", err)
	}
}

// sayGoodbye tells a's agent why the server ends its session, for the
// agent's log; an agent that does not read holds it up a second at most.
func (s *Server) sayGoodbye(a *agentConn, reason string) {
	s.tell(a, frameGoodbye, func() any { return goodbye{Reason: reason} }, time.Second)
}
