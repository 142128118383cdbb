package tunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// agentConn is a registered agent session and the routes it holds.
type agentConn struct {
	node         string
	sess         Session
	ips          []netip.Addr
	cidrs        []netip.Prefix
	defaultRoute bool
	streams      atomic.Int64 // open tunneled streams, for load spreading
}

// handleAgent runs one agent connection: handshake, hello, registration,
// then waits for the session to end and removes the agent's routes at once.
func (s *Server) handleAgent(raw net.Conn) {
	defer raw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	defer cancel()
	remote := raw.RemoteAddr().String()
	sess, err := acceptTLS(ctx, raw, s.agentTLS)
	if err != nil {
		s.log.Warn("agent rejected", "remote", remote, "err", err)
		return
	}
	defer sess.Close()
	if !s.track(sess, sess.Close) {
		return
	}
	defer s.untrack(sess)
	ctrl, hello, err := readHello(ctx, sess)
	if err != nil {
		s.log.Warn("agent rejected", "remote", remote, "subject", sess.Peer().Subject, "err", err)
		return
	}
	a, err := s.admit(sess, hello)
	if err != nil {
		s.log.Warn("agent rejected", "remote", remote, "node", hello.Node, "err", err)
		encodeJSONFrame(ctrl, frameHelloReply, HelloReply{Version: ProtocolVersion, ServerID: s.cfg.ID, Error: err.Error()})
		return
	}
	ctrl.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err := encodeJSONFrame(ctrl, frameHelloReply, HelloReply{Version: ProtocolVersion, ServerID: s.cfg.ID}); err != nil {
		s.log.Warn("agent lost during hello", "remote", remote, "node", a.node, "err", err)
		return
	}
	ctrl.SetDeadline(time.Time{})
	s.routes.add(a)
	s.log.Info("agent registered", "node", a.node, "remote", remote, "ips", a.ips, "podCIDRs", a.cidrs, "defaultRoute", a.defaultRoute)
	<-sess.Done()
	s.routes.remove(a)
	s.log.Info("agent disconnected", "node", a.node, "remote", remote)
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
	switch {
	case h.Version != ProtocolVersion:
		return nil, fmt.Errorf("protocol version %d not supported (server speaks %d)", h.Version, ProtocolVersion)
	case node == "":
		return nil, fmt.Errorf("hello names no node")
	case !peer.provesNode(node):
		return nil, fmt.Errorf("certificate %q does not prove node name %q (want CN=system:node:%s or a DNS SAN %s)", peer.Subject, h.Node, node, node)
	}
	a := &agentConn{node: node, sess: sess, defaultRoute: h.DefaultRoute}
	for _, ip := range h.IPs {
		ip = ip.Unmap()
		if !ip.IsValid() {
			return nil, fmt.Errorf("invalid node IP")
		}
		if !s.cfg.TrustAgentRoutes && !peer.provesIP(ip) {
			return nil, fmt.Errorf("node IP %s is not an IP SAN of the certificate and agent routes are not trusted", ip)
		}
		a.ips = append(a.ips, ip)
	}
	for _, p := range h.PodCIDRs {
		if !p.IsValid() || p != p.Masked() {
			return nil, fmt.Errorf("pod CIDR %s is not a network address", p)
		}
		a.cidrs = append(a.cidrs, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr())))
	}
	if (len(a.cidrs) > 0 || a.defaultRoute) && !s.cfg.TrustAgentRoutes {
		return nil, fmt.Errorf("pod CIDRs and the default route need trusted agent routes, which this server does not allow")
	}
	return a, nil
}

// unmapBits is the prefix length an IPv4-mapped IPv6 address loses when unmapped.
func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}
