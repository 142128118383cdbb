package tunnel

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
	s.tell(a, frameReplicas, func() any { return replicaCount{ServerCount: s.replicaCount(), Peers: s.peers()} }, s.cfg.HandshakeTimeout)
}
