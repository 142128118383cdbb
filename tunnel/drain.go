package tunnel

import (
	"net"
	"sync"
	"time"
)

// Draining, on both ends (DESIGN.md section 6). On SIGTERM the server stops
// taking dials (Server.Shutdown) and the agent tells the server it is
// leaving (a drain frame on the control stream, PROTOCOL.md), so that new
// dials for its node go to another agent or fail at once; each then lets
// the tunnels in flight finish within its drain timeout before it closes.

// inflight counts work in progress — dials and open tunnels — and, once
// draining, refuses new work and reports when the count reaches zero.
type inflight struct {
	mu      sync.Mutex
	n       int
	closing bool
	idle    chan struct{} // made by drain; closed at zero
}

// begin counts new work, unless draining has begun.
func (f *inflight) begin() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing {
		return false
	}
	f.n++
	return true
}

func (f *inflight) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n--; f.n == 0 && f.idle != nil {
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
// Waiting is not all it does: kube-apiserver keeps idle keep-alive
// connections open for minutes, and a drain that waited for them would
// always last the whole DrainTimeout. So while it waits, the drain closes
// each tunnel that looks like a keep-alive between requests (quiet.go).
func (a *Agent) drain(sess Session, ctrl net.Conn, streams *inflight, open *tunnelSet) {
	ctrl.SetWriteDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
	if err := writeFrame(ctrl, frameDrain, nil); err != nil {
		a.log.Warn("could not tell the server this agent is draining", "err", err)
	}
	idle := streams.drain()
	a.log.Info("draining", "tunnels", streams.count(), "timeout", a.cfg.DrainTimeout, "idle_after", a.cfg.DrainIdle)
	start := time.Now()
	deadline := time.NewTimer(a.cfg.DrainTimeout)
	defer deadline.Stop()
	check := time.NewTimer(0)
	defer check.Stop()
	for {
		select {
		case <-idle:
			a.log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
		case <-deadline.C:
			a.log.Warn("drain timeout passed; closing the tunnels still open", "tunnels", streams.count())
		case <-sess.Done():
		case now := <-check.C:
			quiet, every := drainQuiet(a.cfg.DrainIdle, a.cfg.DrainTimeout, now.Sub(start))
			if n := open.closeQuiet(now, quiet); n > 0 {
				a.log.Info("closed tunnels idle between requests", "tunnels", n, "quiet_for", quiet)
			}
			check.Reset(every)
			continue
		}
		sess.Close()
		return
	}
}

// watchDrain reads the agent's control stream after registration; a drain
// frame takes the agent out of routing at once, so new dials for its node
// go elsewhere or fail fast while its tunnels finish.
func (s *Server) watchDrain(ctrl net.Conn, a *agentConn) {
	for {
		typ, _, err := readAnyFrame(ctrl)
		if err != nil {
			return
		}
		if typ == frameDrain {
			s.routes.remove(a)
			s.log.Info("agent draining", "node", a.node)
		}
	}
}
