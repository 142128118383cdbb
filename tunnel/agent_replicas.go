package tunnel

import (
	"context"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"time"
)

// The agent's side of high availability (ha.go): the replicas it holds a
// session to, the highest replica count they report, and the addresses
// they advertise, which Run follows to find the replicas it lacks.

// waitForGap blocks while the agent holds a session to every replica; it
// reports false if ctx ends first.
func (a *Agent) waitForGap(ctx context.Context) bool {
	for {
		a.mu.Lock()
		gap, changed := len(a.held) < a.want, a.changed
		a.mu.Unlock()
		if gap {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// nextAddress returns where to connect next: the advertised address of a
// replica the agent knows but does not hold (and its ID), or else
// ServerAddress (and "").
func (a *Agent) nextAddress() (addr, id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var lost []string
	for id := range a.addrs {
		if _, ok := a.held[id]; !ok {
			lost = append(lost, id)
		}
	}
	if len(lost) == 0 {
		return a.cfg.ServerAddress, ""
	}
	id = lost[rand.N(len(lost))]
	return a.addrs[id], id
}

// answeredFor reports whether the agent should stop trying the address of
// lost replica id after an attempt there (s on success, rej on a refusal):
// another replica answered at it, or the attempt failed with the backoff
// already at its maximum.
func (a *Agent) answeredFor(id string, s *agentSession, rej *RejectedError, backoff time.Duration) bool {
	answered := ""
	switch {
	case s != nil:
		answered = s.id
	case rej != nil:
		answered = rej.ServerID
	}
	if answered != "" && answered != id {
		return true
	}
	return s == nil && backoff == a.cfg.MaxBackoff
}

// update changes held (or addrs) under the lock, sets want to the highest
// count a replica held reports — one replica's low or stale count must not
// stop the agent from looking for the others; with none held the last want
// stays — and wakes waitForGap.
func (a *Agent) update(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f()
	if len(a.held) > 0 {
		a.want = max(slices.Max(slices.Collect(maps.Values(a.held))), 1)
	}
	close(a.changed)
	a.changed = make(chan struct{})
}

// heldIDs returns the IDs of the replicas the agent holds, for its hello.
func (a *Agent) heldIDs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]string, 0, len(a.held))
	for id := range a.held {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// remember keeps the address replica id advertised, to find it there if the
// session is lost; an address another replica had is that one's no more.
// Over SSH the agent only uses ServerAddress (its known_hosts names hosts).
func (a *Agent) remember(id, addr string) {
	for other, at := range a.addrs {
		if at == addr || other == id {
			delete(a.addrs, other)
		}
	}
	if _, _, err := net.SplitHostPort(addr); err == nil && a.cfg.SSH == nil {
		a.addrs[id] = addr
	}
}

// rememberPeers keeps the addresses of the other replicas that replica
// from knows of, to connect to them directly; a replica's word about
// itself (remember) wins over another's.
func (a *Agent) rememberPeers(from string, peers map[string]string) {
	for id, addr := range peers {
		if _, held := a.held[id]; id != from && !held {
			a.remember(id, addr)
		}
	}
}
