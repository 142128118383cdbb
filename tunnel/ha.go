package tunnel

import (
	"math"
	"net"
	"strconv"
	"sync"
	"time"
)

// High availability (README, "High availability"). Several servers —
// replicas — may share one agent address behind a TCP load balancer. Each
// has an ID (ServerConfig.ID) and knows how many replicas there are
// (ServerConfig.Replicas). An agent keeps one session to every replica, so
// that any replica can route any dial: it connects through the shared
// address again and again, naming in its hello the IDs of the replicas it
// already holds a session to; a replica it already holds answers "held"
// without registering anything, and the agent tries again after a jittered
// wait, until it holds as many sessions as the replica count its servers
// report. Replicas may advertise addresses of their own
// (ServerConfig.AdvertiseAddress) and know each other's (Replicas.Addresses:
// the Leases): an agent connects to a replica it knows the address of
// directly, with backoff, and probes the shared address only for replicas
// it knows no address of. So a replica that goes away (its sessions end,
// or keepalive ends them) is found again as soon as it is back, without
// probing the others. When the count changes, every registered agent is
// told on its control stream.

// Replicas tells a server how many replicas share its agent address.
// Its methods must be safe for concurrent use.
type Replicas interface {
	// Count returns the number of replicas, this one included.
	Count() int
	// Notify registers f, to be called after Count changes. The server
	// calls Notify once, in NewServer; f does not block for long and may be
	// called from any goroutine, also after the server closed.
	Notify(f func())
	// Addresses returns the agent addresses the replicas advertise
	// (ServerConfig.AdvertiseAddress), by server ID, as far as it knows
	// them; nil if it knows none. Agents connect to those directly.
	Addresses() map[string]string
}

// FixedReplicas is a replica count that never changes (tunnel-server
// --server-count). Counts below 1 mean 1.
type FixedReplicas int

// Count returns n, or 1 if n is less.
func (n FixedReplicas) Count() int { return max(int(n), 1) }

// Notify does nothing: the count never changes.
func (FixedReplicas) Notify(func()) {}

// Addresses returns nil: a fixed count knows no replica's address.
func (FixedReplicas) Addresses() map[string]string { return nil }

// isHostPort reports whether addr is "host:port" with a host and a port
// number.
func isHostPort(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && n > 0
}

// replicaCount returns the number of replicas the server knows of.
func (s *Server) replicaCount() int {
	if s.cfg.Replicas == nil {
		return 1
	}
	return max(s.cfg.Replicas.Count(), 1)
}

// peers returns the addresses the other replicas advertise, by ID.
func (s *Server) peers() map[string]string {
	if s.cfg.Replicas == nil {
		return nil
	}
	peers := s.cfg.Replicas.Addresses()
	delete(peers, s.cfg.ID)
	return peers
}

// welcome sends a registered agent its hello reply, with the replica
// count, and from then on lets replicasChanged reach it on ctrl. Both hold
// a's control lock while they read the count and write, so the agent's
// last word is the latest count.
func (s *Server) welcome(a *agentConn, ctrl net.Conn) error {
	a.ctrlMu.Lock()
	defer a.ctrlMu.Unlock()
	ctrl.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer ctrl.SetDeadline(time.Time{})
	err := encodeJSONFrame(ctrl, frameHelloReply, HelloReply{Version: ProtocolVersion, ServerID: s.cfg.ID,
		ServerCount: s.replicaCount(), Address: s.cfg.AdvertiseAddress, Peers: s.peers()})
	if err == nil {
		a.ctrl = ctrl
	}
	return err
}

// replicasChanged tells every registered agent the new replica count, each
// from a goroutine of its own that Close waits for: one agent whose
// connection is stuck must hold up neither the others nor the caller (the
// Lease renewal loop).
// Each write reads the count anew, so whatever order they run in, an
// agent's last frame carries the latest count.
func (s *Server) replicasChanged() {
	n := s.replicaCount()
	s.metrics.replicas.Set(float64(n))
	s.log.Info("replica count changed", "replicas", n)
	for _, a := range s.routes.all() {
		s.spawn(func() { s.announceReplicas(a) })
	}
}

func (s *Server) announceReplicas(a *agentConn) {
	a.ctrlMu.Lock()
	defer a.ctrlMu.Unlock()
	if a.ctrl == nil { // its hello reply, still to come, carries the count
		return
	}
	a.ctrl.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer a.ctrl.SetWriteDeadline(time.Time{})
	if err := encodeJSONFrame(a.ctrl, frameReplicas, replicaCount{ServerCount: s.replicaCount(), Peers: s.peers()}); err != nil {
		s.log.Warn("could not tell an agent the replica count", "node", a.node, "err", err)
	}
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

// Coverage returns the number of nodes with a registered agent and, with a
// node source, the number of nodes it knows (else 0).
func (s *Server) Coverage() (withAgent, known int) {
	if s.cfg.Nodes != nil {
		known = s.cfg.Nodes.Count()
	}
	return s.routes.nodes(), known
}

// acceptRate spaces out agent connections (ServerConfig.AgentAcceptRate):
// a burst of up to one second's worth at once, then one per interval. The
// accept loop waits for each connection's slot before it starts the
// handshake, so that a fleet reconnecting at once cannot starve the server
// of CPU with TLS handshakes. A connection whose slot is more than
// acceptQueue away is closed at once, before any TLS: queueing it longer
// would outlast the agent's handshake timeout and spend a handshake on a
// connection the agent has given up; closed, it costs nothing, and the
// agent tries again after its backoff or probe interval.
type acceptRate struct {
	interval time.Duration // zero: no limit
	burst    time.Duration // how far the schedule may lag behind now
	mu       sync.Mutex
	next     time.Time // the next free slot
}

// acceptQueue is how long a connection may wait for its handshake slot.
const acceptQueue = time.Second

func newAcceptRate(perSecond float64) *acceptRate {
	if perSecond <= 0 {
		return &acceptRate{}
	}
	interval := time.Duration(float64(time.Second) / perSecond)
	burst := max(math.Ceil(perSecond), 1)
	return &acceptRate{interval: interval, burst: time.Duration(burst-1) * interval}
}

// delay books the next slot and returns how long to wait for it, or
// reports false, booking nothing, if that is longer than acceptQueue.
func (r *acceptRate) delay(now time.Time) (time.Duration, bool) {
	if r == nil || r.interval == 0 {
		return 0, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	slot := r.next
	if earliest := now.Add(-r.burst); slot.Before(earliest) {
		slot = earliest
	}
	wait := max(slot.Sub(now), 0)
	if wait > acceptQueue {
		return 0, false
	}
	r.next = slot.Add(r.interval)
	return wait, true
}
