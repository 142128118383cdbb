package tunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// agentConn is a registered agent session and the routes it holds.
type agentConn struct {
	node         string
	version      int // the protocol version the session speaks
	sess         Session
	ips          []netip.Addr
	cidrs        []netip.Prefix
	hosts        []string // further names routed to it (nodes.go)
	defaultRoute bool
	streams      atomic.Int64    // tunnels (dialing or open), for load spreading and MaxStreamsPerAgent
	done         <-chan struct{} // the session's Done: lookups skip a dead session at once
	draining     atomic.Bool     // the agent sent its drain frame: a last resort (routing.go)
	moves        bool            // the transport can move tunnels between agents (move.go)
	retirement                   // replace.go

	ctrlMu sync.Mutex // orders the server's writes on ctrl (control.go)
	ctrl   net.Conn   // the control stream, once the hello reply is sent
}

// handleAgent runs one TLS agent connection: its turn (accept.go), the
// handshake, then runAgent, which calls registered once the agent is
// registered or refused.
func (s *Server) handleAgent(raw net.Conn, registered func(), keep func() (end func())) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	if !s.awaitTurn(ctx, raw) {
		raw.Close()
		return
	}
	remote := raw.RemoteAddr().String()
	sess, err := acceptTLS(ctx, raw, s.agentTLS, s.sessionConfig(remote))
	if err != nil {
		raw.Close()
		s.handshakeLimit(ctx)
		s.reject(RejectHandshake)
		s.log.Warn("agent rejected", "remote", remote, "kind", RejectHandshake, "err", err)
		return
	}
	s.runAgent(ctx, sess, remote, registered, keep)
}

// runAgent is the part of an agent connection common to every transport
// (TLS + yamux here, SSH in ssh_listen.go): hello within ctx, admission and
// registration (then it calls registered) on the connection's goroutine;
// then keepalive and drain until the session ends, on a new goroutine that
// keeps the connection (goConn's keep). The handshake grew the first
// goroutine's stack to 8 KiB or more, and a registered agent waits for
// hours: a fresh goroutine waits on a 2 KiB stack.
func (s *Server) runAgent(ctx context.Context, sess Session, remote string, registered func(), keep func() (end func())) {
	a, ctrl, ok := s.register(ctx, sess, remote, registered)
	if !ok {
		return
	}
	end := keep()
	go func() {
		defer end()
		s.serveAgent(sess, a, ctrl, remote)
	}()
}

// register reads the hello within ctx, admits the agent and registers it.
// If it fails it has said why to the agent and closed sess.
func (s *Server) register(ctx context.Context, sess Session, remote string, registered func()) (a *agentConn, ctrl net.Conn, ok bool) {
	if !s.track(sess, sess.Close) { // the server has closed, and so has sess
		return nil, nil, false
	}
	defer func() {
		if !ok {
			s.untrack(sess)
			sess.Close()
		}
	}()
	ctrl, hello, err := readHello(ctx, sess)
	if err != nil {
		s.handshakeLimit(ctx)
		s.reject(RejectHello)
		s.log.Warn("agent rejected", "remote", remote, "subject", sess.Peer().Subject, "kind", RejectHello, "err", err)
		return nil, nil, false
	}
	a, err = s.admit(sess, hello)
	if err == nil && slices.Contains(hello.Held, s.cfg.ID) { // ha.go
		s.metrics.redundant.Inc()
		s.log.Debug("agent already holds a session to this replica", "remote", remote, "node", a.node)
		s.refuse(ctrl, HelloReply{Error: "agent already holds a session to server " + s.cfg.ID, Held: true})
		return nil, nil, false
	}
	if err == nil && !s.sessions.enter() {
		s.limited(LimitAgents)
		a, err = nil, rejection(RejectLimit, "server at its limit of %d agents (%s)", s.cfg.MaxAgents, limitFlags[LimitAgents])
	}
	if err != nil {
		reason := rejectReason(err)
		s.reject(reason)
		s.log.Warn("agent rejected", "remote", remote, "node", hello.Node, "kind", reason, "err", err)
		s.refuse(ctrl, HelloReply{Error: err.Error()})
		return nil, nil, false
	}
	ips, cidrs, def := a.ips, a.cidrs, a.defaultRoute // a node change may rebind a once routed (nodes.go)
	// Routes first, so that an agent told it is registered is routable.
	s.routes.add(a)
	if s.cfg.Nodes != nil {
		s.syncNode(a.node) // a change since admit
	}
	if err := s.welcome(a, ctrl); err != nil { // control.go
		s.routes.remove(a)
		s.sessions.leave()
		s.reject(RejectHello)
		s.log.Warn("agent lost during hello", "remote", remote, "node", a.node, "err", err)
		return nil, nil, false
	}
	s.metrics.registrations.Inc()
	registered()
	s.log.Info("agent registered", "node", a.node, "remote", remote, "ips", ips, "podCIDRs", cidrs, "defaultRoute", def)
	s.replaceOlder(a) // replace.go
	return a, ctrl, true
}

// serveAgent runs registered agent a until its session ends: keepalive,
// adoptions of moved tunnels, and the control stream; then it closes the
// session and gives its place back.
func (s *Server) serveAgent(sess Session, a *agentConn, ctrl net.Conn, remote string) {
	defer sess.Close()
	defer s.untrack(sess)
	defer s.sessions.leave()
	stopKeepalive := startKeepalive(sess, s.cfg.KeepaliveInterval, s.cfg.KeepaliveTimeout, s.metrics.keepaliveRTT, s.log.With("node", a.node, "remote", remote))
	adopts := make(chan struct{})
	if a.moves {
		go func() { defer close(adopts); s.acceptAdopts(a) }() // move.go
	} else {
		close(adopts)
	}
	s.watchDrain(ctrl, a) // drain.go; returns when the control stream ends
	<-sess.Done()         // a replaced session ends once its tunnels have (replace.go)
	s.routes.remove(a)
	<-adopts
	stopKeepalive()
	s.log.Info("agent disconnected", "node", a.node, "remote", remote)
}

// refuse answers a hello with r, which says why nothing was registered,
// and waits a while for the agent to close the session.
func (s *Server) refuse(ctrl net.Conn, r HelloReply) {
	r.Version, r.ServerID, r.ServerCount = ProtocolVersion, s.cfg.ID, s.replicaCount() // a refusal's version is informational
	ctrl.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	encodeJSONFrame(ctrl, frameHelloReply, r)
	// Closing at once could end the session before the agent reads the
	// reason; the agent closes on reading it, so wait for that a while.
	ctrl.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	io.Copy(io.Discard, ctrl)
}

// readHello accepts the control stream the agent opens first and reads its
// hello, all within ctx.
func readHello(ctx context.Context, sess Session) (net.Conn, Hello, error) {
	ctrl, err := sess.Accept(ctx)
	if err != nil {
		return nil, Hello{}, fmt.Errorf("no control stream: %w", err)
	}
	if d, ok := ctx.Deadline(); ok {
		ctrl.SetReadDeadline(d)
	}
	payload, err := readFrame(ctrl, frameHello)
	if err != nil {
		return nil, Hello{}, fmt.Errorf("reading hello: %w", err)
	}
	h, err := decodeHello(payload)
	return ctrl, h, err
}

// admit checks a hello against what the session's credential proves and
// returns the agent to register, or the reason to reject it.
func (s *Server) admit(sess Session, h Hello) (*agentConn, error) {
	peer := sess.Peer()
	node := strings.ToLower(h.Node)
	version, err := negotiateVersion(h)
	if err != nil {
		return nil, rejection(RejectVersion, "%s", err)
	}
	switch {
	case node == "":
		return nil, rejection(RejectIdentity, "hello names no node")
	case !peer.provesNode(node):
		return nil, rejection(RejectIdentity, "certificate %q does not prove node name %q (want CN=system:node:%s or a DNS SAN %s)", peer.Subject, h.Node, node, node)
	}
	_, moves := sess.(*muxSession)
	a := &agentConn{node: node, version: version, sess: sess, done: sess.Done(), defaultRoute: h.DefaultRoute, moves: moves}
	if s.cfg.Nodes != nil {
		return s.admitNode(a, h) // nodes.go: routes from the node source
	}
	for _, ip := range h.IPs {
		ip = ip.Unmap()
		if !ip.IsValid() {
			return nil, rejection(RejectRoutes, "invalid node IP")
		}
		if !s.cfg.TrustAgentRoutes && !peer.provesIP(ip) {
			return nil, rejection(RejectRoutes, "node IP %s is not an IP SAN of the certificate and agent routes are not trusted", ip)
		}
		a.ips = append(a.ips, ip)
	}
	for _, p := range h.PodCIDRs {
		if !p.IsValid() || p != p.Masked() {
			return nil, rejection(RejectRoutes, "pod CIDR %s is not a network address", p)
		}
		a.cidrs = append(a.cidrs, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr())))
	}
	if (len(a.cidrs) > 0 || a.defaultRoute) && !s.cfg.TrustAgentRoutes {
		return nil, rejection(RejectRoutes, "pod CIDRs and the default route need trusted agent routes, which this server does not allow")
	}
	return a, nil
}

// admitError is a refused registration and its metric label.
type admitError struct {
	reason string // one of the Reject… constants
	msg    string
}

func (e *admitError) Error() string { return e.msg }

func rejection(reason, format string, args ...any) error {
	return &admitError{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// rejectReason returns the metric label of an admission error.
func rejectReason(err error) string {
	if ae, ok := err.(*admitError); ok {
		return ae.reason
	}
	return RejectHello
}

func (s *Server) reject(reason string) { s.metrics.rejections.WithLabelValues(reason).Inc() }

// unmapBits is the prefix length an IPv4-mapped IPv6 address loses when unmapped.
func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}
