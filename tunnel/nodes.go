package tunnel

import (
	"net/netip"
	"slices"
	"strings"
)

// Nodes as the source of truth. With ServerConfig.Nodes set (tunnel-server
// --kubeconfig: the Kubernetes Node objects), an agent's routes come from
// the record of its node, not from its hello: the node name its certificate
// proves binds it to that node's addresses, hostnames and pod CIDRs, and to
// the default route if the source says so. What the hello declares is only
// checked — an IP, pod CIDR or default route the node does not have rejects
// the agent — and an agent whose node the source does not know is rejected.
// When a node changes, the routes of its agents follow at once; when it is
// deleted, its agents are disconnected (they reconnect with backoff and are
// admitted again once the node exists).

// NodeInfo is what a NodeSource knows of one node: the routes its agent gets.
type NodeInfo struct {
	// IPs are the node's addresses (Kubernetes: InternalIP and ExternalIP).
	IPs []netip.Addr
	// Hostnames are further names that route to the node (Kubernetes: the
	// Hostname addresses). The node's own name always routes to it, and
	// wins over another node's hostname.
	Hostnames []string
	// PodCIDRs are the node's pod ranges (Kubernetes: spec.podCIDRs).
	PodCIDRs []netip.Prefix
	// DefaultRoute makes the node's agent serve destinations no other
	// route matches.
	DefaultRoute bool
}

// NodeSource is a record of the cluster's nodes the server trusts, such as
// an informer's cache of Kubernetes Nodes (package tunnel/kube). Its methods
// must be safe for concurrent use.
type NodeSource interface {
	// Lookup returns what the source knows of the node (a lower-case name),
	// or false if no such node exists.
	Lookup(node string) (NodeInfo, bool)
	// Count returns the number of nodes the source knows: the agents a
	// fully covered cluster has (Server.Coverage).
	Count() int
	// Notify registers f, to be called with a node's name each time that
	// node is added, changed or deleted. The server calls Notify once, in
	// NewServer; f does not block for long and may be called from any
	// goroutine, also after the server closed.
	Notify(f func(node string))
}

// admitNode fills in a's routes from the node source and checks the hello
// against them: declarations are checked, never trusted.
func (s *Server) admitNode(a *agentConn, h Hello) (*agentConn, error) {
	info, ok := s.cfg.Nodes.Lookup(a.node)
	if !ok {
		return nil, rejection(RejectNode, "no node %q is known to the server's node source (the Kubernetes API)", a.node)
	}
	for _, ip := range h.IPs {
		if !slices.Contains(info.IPs, ip.Unmap()) {
			return nil, rejection(RejectRoutes, "node IP %s is not an address of node %s", ip, a.node)
		}
	}
	for _, p := range h.PodCIDRs {
		if !slices.Contains(info.PodCIDRs, p) {
			return nil, rejection(RejectRoutes, "pod CIDR %s is not a pod CIDR of node %s", p, a.node)
		}
	}
	if h.DefaultRoute && !info.DefaultRoute {
		return nil, rejection(RejectRoutes, "node %s is not named to serve the default route", a.node)
	}
	a.bind(info)
	return a, nil
}

// bind sets a's routes to the node's; a must not be in the routing table.
func (a *agentConn) bind(info NodeInfo) {
	a.ips, a.cidrs, a.hosts, a.defaultRoute = nil, nil, nil, info.DefaultRoute
	for _, ip := range info.IPs {
		if ip = ip.Unmap(); ip.IsValid() && !slices.Contains(a.ips, ip) {
			a.ips = append(a.ips, ip)
		}
	}
	for _, p := range info.PodCIDRs {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr())).Masked()
		if p.IsValid() && !slices.Contains(a.cidrs, p) {
			a.cidrs = append(a.cidrs, p)
		}
	}
	for _, h := range info.Hostnames {
		if h = strings.ToLower(h); h != "" && h != a.node && !slices.Contains(a.hosts, h) {
			a.hosts = append(a.hosts, h)
		}
	}
}

// syncNode brings the routes of node's agents in line with the node
// source: new routes when the node changed, none and a closed session when
// it was deleted. The server calls it on every notification and after each
// registration, so a change between an agent's admission and its
// registration is not lost.
func (s *Server) syncNode(node string) {
	node = strings.ToLower(node)
	for _, a := range s.rebindNode(node) {
		s.log.Warn("node deleted; disconnecting its agent", "node", node)
		a.sess.Close() // outside nodeMu: a close may wait on its peer
	}
}

// rebindNode looks node up and rebinds its agents, under nodeMu so that
// lookups and the rebinds they cause happen in the same order; it returns
// the agents of a deleted node, out of every route.
func (s *Server) rebindNode(node string) []*agentConn {
	s.nodeMu.Lock()
	defer s.nodeMu.Unlock()
	info, ok := s.cfg.Nodes.Lookup(node)
	return s.routes.rebind(node, info, ok)
}
