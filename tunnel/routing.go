package tunnel

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// routes is the routing table of DESIGN.md section 3: destination → agent.
// Lookups take a read lock and allocate nothing; changes rebuild nothing but
// the entries of the agent that came or went.
type routes struct {
	mu       sync.RWMutex
	names    map[string][]*agentConn       // node name → agents, newest last
	hosts    map[string][]*agentConn       // further hostname → agents, newest last (nodes.go)
	ips      map[netip.Addr][]*agentConn   // node IP → agents, newest last
	prefixes map[netip.Prefix][]*agentConn // pod CIDR → agents, newest last
	lens4    []int                         // distinct IPv4 prefix lengths, longest first
	lens6    []int                         // distinct IPv6 prefix lengths, longest first
	defaults []*agentConn                  // agents serving the default route
	changed  chan struct{}                 // closed and replaced on every change
}

func newRoutes() *routes {
	return &routes{
		names:    make(map[string][]*agentConn),
		hosts:    make(map[string][]*agentConn),
		ips:      make(map[netip.Addr][]*agentConn),
		prefixes: make(map[netip.Prefix][]*agentConn),
		changed:  make(chan struct{}),
	}
}

// add makes a the newest agent for every route it holds.
func (t *routes) add(a *agentConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.addLocked(a)
	t.reindexLocked()
}

func (t *routes) addLocked(a *agentConn) {
	t.names[a.node] = append(t.names[a.node], a)
	for _, h := range a.hosts {
		t.hosts[h] = append(t.hosts[h], a)
	}
	for _, ip := range a.ips {
		t.ips[ip] = append(t.ips[ip], a)
	}
	for _, p := range a.cidrs {
		t.prefixes[p] = append(t.prefixes[p], a)
	}
	if a.defaultRoute {
		t.defaults = append(t.defaults, a)
	}
}

// remove drops a from every route; other agents for the same node remain.
func (t *routes) remove(a *agentConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.removeLocked(a)
	t.reindexLocked()
}

// takeOver removes the agents of a's node that registered before a from
// every route and returns them (replace.go retires them). Agents that
// registered after a stay: a's takeOver can run after a newer session's
// registration, and then that session replaces a, not the reverse.
func (t *routes) takeOver(a *agentConn) []*agentConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.names[a.node] // oldest first
	i := slices.Index(list, a)
	if i <= 0 { // a is the oldest, or out of routing already
		return nil
	}
	old := slices.Clone(list[:i])
	for _, x := range old {
		t.removeLocked(x)
	}
	t.reindexLocked()
	return old
}

func (t *routes) removeLocked(a *agentConn) {
	dropFrom(t.names, a.node, a)
	for _, h := range a.hosts {
		dropFrom(t.hosts, h, a)
	}
	for _, ip := range a.ips {
		dropFrom(t.ips, ip, a)
	}
	for _, p := range a.cidrs {
		dropFrom(t.prefixes, p, a)
	}
	t.defaults = slices.DeleteFunc(t.defaults, func(x *agentConn) bool { return x == a })
}

func dropFrom[K comparable](m map[K][]*agentConn, k K, a *agentConn) {
	list := slices.DeleteFunc(m[k], func(x *agentConn) bool { return x == a })
	if len(list) == 0 {
		delete(m, k)
		return
	}
	m[k] = list
}

// reindexLocked recomputes the prefix lengths in use and wakes waiters.
func (t *routes) reindexLocked() {
	t.lens4, t.lens6 = t.lens4[:0], t.lens6[:0]
	for p := range t.prefixes {
		if p.Addr().Is4() {
			t.lens4 = append(t.lens4, p.Bits())
		} else {
			t.lens6 = append(t.lens6, p.Bits())
		}
	}
	desc := func(a, b int) int { return b - a }
	slices.SortFunc(t.lens4, desc)
	slices.SortFunc(t.lens6, desc)
	t.lens4 = slices.Compact(t.lens4)
	t.lens6 = slices.Compact(t.lens6)
	close(t.changed)
	t.changed = make(chan struct{})
}

// Changed returns a channel that is closed at the next change of the table.
func (t *routes) Changed() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changed
}

// lookup returns the agent for host (a node name, hostname or IP literal,
// without port), or nil. Order: exact name or IP, longest pod-CIDR prefix,
// then the default route.
func (t *routes) lookup(host string) *agentConn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if ip, ok := parseIP(host); ok {
		if a := t.lookupIPLocked(ip.Unmap()); a != nil {
			return a
		}
	} else if a := t.lookupNameLocked(strings.ToLower(host)); a != nil {
		return a
	}
	return leastLoaded(t.defaults)
}

// lookupNameLocked prefers the node of that name to a node that has it as
// a further hostname.
func (t *routes) lookupNameLocked(name string) *agentConn {
	if a := newestLive(t.names[name]); a != nil {
		return a
	}
	return newestLive(t.hosts[name])
}

func (t *routes) lookupIPLocked(ip netip.Addr) *agentConn {
	if a := newestLive(t.ips[ip]); a != nil {
		return a
	}
	lens := t.lens6
	if ip.Is4() {
		lens = t.lens4
	}
	for _, bits := range lens {
		p, _ := ip.Prefix(bits)
		if a := newestLive(t.prefixes[p]); a != nil {
			return a
		}
	}
	return nil
}

// newestLive returns the newest agent in list whose session has not ended:
// a session whose Done fired is out of routing at once, before its handler
// removes its routes. A draining agent is taken only if no other is live.
func newestLive(list []*agentConn) *agentConn {
	var last *agentConn
	for i := len(list) - 1; i >= 0; i-- {
		if !list[i].live() {
			continue
		}
		if !list[i].draining.Load() {
			return list[i]
		}
		if last == nil {
			last = list[i]
		}
	}
	return last
}

func (a *agentConn) live() bool {
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// leastLoaded picks the live agent carrying the fewest streams; on a tie
// the newest wins. A draining agent is taken only if no other is live.
func leastLoaded(list []*agentConn) *agentConn {
	var best *agentConn
	for i := len(list) - 1; i >= 0; i-- {
		a := list[i]
		if !a.live() {
			continue
		}
		if best == nil || best.draining.Load() && !a.draining.Load() ||
			best.draining.Load() == a.draining.Load() && a.streams.Load() < best.streams.Load() {
			best = a
		}
	}
	return best
}

// count returns the number of distinct registered agents.
func (t *routes) count() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := 0
	for _, list := range t.names {
		n += len(list)
	}
	return n
}

// all returns every agent in the routing table.
func (t *routes) all() []*agentConn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var list []*agentConn
	for _, l := range t.names {
		list = append(list, l...)
	}
	return list
}

// nodes returns the number of nodes with a registered agent.
func (t *routes) nodes() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.names)
}

// rebind gives every agent of node the routes of info, in place (the
// newest agent stays the newest); if the node no longer exists it removes
// them from every route instead and returns them.
func (t *routes) rebind(node string, info NodeInfo, exists bool) (gone []*agentConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, a := range slices.Clone(t.names[node]) { // removeLocked edits the list
		t.removeLocked(a)
		if !exists {
			gone = append(gone, a)
			continue
		}
		a.bind(info)
		t.addLocked(a)
	}
	t.reindexLocked()
	return gone
}

// countByTransport is count split by the transport of each agent's session.
func (t *routes) countByTransport() map[string]int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	counts := make(map[string]int, 2)
	for _, list := range t.names {
		for _, a := range list {
			t := a.sess.Peer().Transport
			if t == "" {
				t = TransportTLS
			}
			counts[t]++
		}
	}
	return counts
}

// parseIP parses an IP literal without allocating for host names, which
// netip.ParseAddr would answer with an allocated error.
func parseIP(host string) (netip.Addr, bool) {
	if !strings.Contains(host, ":") && strings.Trim(host, "0123456789.") != "" {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(host)
	return ip, err == nil
}
