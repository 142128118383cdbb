package tunnel

import (
	"net"
	"sync"
	"time"
)

// Draining, on both ends (DESIGN.md section 6). On SIGTERM the server stops
// taking dials (Server.Shutdown) and the agent tells the server it is
// leaving (a drain frame on the control stream, PROTOCOL.md), so that new
// dials for its node go to another agent where one serves them; each then
// lets the tunnels in flight finish within its drain timeout before it
// closes. A draining agent still takes the dials the server sends it — the
// last agent for a destination, until its replacement registers — up to
// the moment its last tunnel has ended.

// inflight counts work in progress — dials and open tunnels — and, once
// draining, reports when the count reaches zero.
type inflight struct {
	mu      sync.Mutex
	n       int
	closing bool
	done    bool          // the count reached zero while draining
	idle    chan struct{} // made by drain; closed at zero
}

// begin counts new work, unless draining has begun or, if duringDrain (the
// agent's dials, which a draining agent still serves), unless the drain
// has ended.
func (f *inflight) begin(duringDrain bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done || f.closing && !duringDrain {
		return false
	}
	f.n++
	return true
}

func (f *inflight) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n--; f.n == 0 && f.idle != nil {
		f.done = true
		close(f.idle)
	}
}

// drain refuses new work from now on and returns a channel that is closed
// once no work is left.
func (f *inflight) drain() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.idle == nil {
		f.closing = true
		f.idle = make(chan struct{})
		if f.n == 0 {
			f.done = true
			close(f.idle)
		}
	}
	return f.idle
}

func (f *inflight) draining() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closing
}

func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// drain runs when the agent's context ends during a registered session:
// it tells the server on the control stream, then waits for the session's
// tunnels up to DrainTimeout and closes the session. It ends at the latest
// when the session does, and serve waits for it.
//
// Waiting is not all it does. As soon as a successor on the node takes
// them (HandoffSocket), it hands its tunnels over (move.go), so that
// nothing is cut. And kube-apiserver keeps idle keep-alive connections
// open for minutes, so a drain that only waited would always last the
// whole DrainTimeout: a tunnel that cannot move and looks like a
// keep-alive between requests is closed (quiet.go).
func (a *Agent) drain(s *agentSession) {
	if err := s.tell([]byte{frameDrain, 0, 0}, a.cfg.HandshakeTimeout); err != nil {
		a.log.Warn("could not tell the server this agent is draining", "err", err)
	}
	idle := s.streams.drain()
	a.log.Info("draining", "tunnels", s.streams.count(), "timeout", a.cfg.DrainTimeout, "idle_after", a.cfg.DrainIdle)
	start := time.Now()
	deadline := time.NewTimer(a.cfg.DrainTimeout)
	defer deadline.Stop()
	check := time.NewTimer(0)
	defer check.Stop()
	var lastMove time.Time
	for {
		select {
		case <-idle:
			a.log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
		case <-deadline.C:
			a.log.Warn("drain timeout passed; closing the tunnels still open", "tunnels", s.streams.count())
			s.open.closeAll() // closing the session alone leaves a tunnel whose node side is still open
		case <-s.sess.Done():
		case now := <-check.C:
			handOff := a.cfg.HandoffSocket != "" && s.moves
			if handOff && now.Sub(lastMove) >= moveEvery {
				lastMove = now
				if n := a.moveTunnels(s); n > 0 {
					a.log.Info("handing tunnels to the successor", "tunnels", n)
				}
			}
			quiet, every := drainQuiet(a.cfg.DrainIdle, a.cfg.DrainTimeout, now.Sub(start))
			var idle, busy int
			var busyLeft bool
			if !handOff || now.Sub(start) >= a.cfg.DrainIdle { // first, a successor's chance to take them
				idle, busy, busyLeft = s.open.closeQuiet(now, quiet)
			}
			if idle > 0 {
				a.log.Info("closed tunnels idle between requests", "tunnels", idle, "quiet_for", quiet)
			}
			if busy > 0 {
				a.log.Info("closed busy tunnels in a pause between requests", "tunnels", busy, "quiet_for", drainLastQuiet)
			}
			if busyLeft {
				every = drainLastQuiet / 5
			}
			if handOff {
				every = min(every, moveEvery)
			}
			check.Reset(every)
			continue
		}
		s.sess.Close()
		return
	}
}

// watchDrain reads the agent's control stream after registration; after a
// drain frame the agent is routed to only when no other agent serves the
// destination (routing.go): new dials go elsewhere at once where they can,
// and do not fail in the moment between an agent's SIGTERM and its
// replacement's registration.
func (s *Server) watchDrain(ctrl net.Conn, a *agentConn) {
	for {
		typ, payload, err := readAnyFrame(ctrl)
		if err != nil {
			return
		}
		switch typ {
		case frameDrain:
			a.draining.Store(true)
			s.log.Info("agent draining", "node", a.node)
		case frameMove:
			if id, err := decodeDialID(payload); err == nil && a.moves {
				s.moveRequested(a, id) // move.go
			}
		}
	}
}
