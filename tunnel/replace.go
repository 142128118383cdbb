package tunnel

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Duplicate agents. A second session for the same node — an agent restart
// that overlaps the old session, a reconnect before the server noticed the
// old connection die — takes every route of that node as soon as it is
// registered (routing.go: the newest wins). The older session is then
// retired: out of routing at once, left alone while its open tunnels
// finish, and closed when the last one ends or ReplacedDrainTimeout
// passes. Its agent sees the session end and reconnects with backoff; if
// it is still alive it becomes the newest in turn, so two live agents with
// one identity alternate, slowed by their backoff, and every switch is
// logged on both ends.

// retirement is the replacement state of an agentConn.
type retirement struct {
	retired atomic.Bool
	once    sync.Once
	idle    chan struct{} // a token each time the stream count drops to zero
}

func (a *agentConn) initRetirement() {
	a.idle = make(chan struct{}, 1)
}

// replaceOlder retires every other session of a's node: each drains on a
// goroutine of its own (which Close waits for), and that closes the session
// when it is done.
func (s *Server) replaceOlder(a *agentConn) {
	for _, old := range s.routes.takeOver(a) {
		if old.draining.Load() { // out of routing now; its own drain ends it
			continue
		}
		old.once.Do(old.initRetirement)
		if !old.retired.CompareAndSwap(false, true) {
			continue
		}
		s.log.Info("agent session replaced by a newer one for the same node; closing it once its tunnels end",
			"node", old.node, "tunnels", old.streams.Load(), "timeout", s.cfg.ReplacedDrainTimeout)
		s.spawn(func() { s.drainReplaced(old) }) // lifecycle.go
	}
}

// drainReplaced waits until a retired session carries no tunnel, or
// ReplacedDrainTimeout passes, or it ends by itself; then closes it.
func (s *Server) drainReplaced(a *agentConn) {
	defer a.sess.Close()
	s.sayGoodbye(a, fmt.Sprintf("replaced by a newer session for node %s; open tunnels drain for up to %s", a.node, s.cfg.ReplacedDrainTimeout))
	t := time.NewTimer(s.cfg.ReplacedDrainTimeout)
	defer t.Stop()
	for a.streams.Load() > 0 {
		select {
		case <-a.idle:
		case <-a.done:
			return
		case <-t.C:
			s.log.Warn("replaced session's drain timeout passed; closing its tunnels", "node", a.node, "tunnels", a.streams.Load())
			return
		}
	}
	s.log.Info("replaced session closed", "node", a.node)
}
