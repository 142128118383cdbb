package tunnel

import "fmt"

// The agent a dial takes: the routing table's choice (routing.go), with a
// stream counted on it within MaxStreamsPerAgent.
//
// A dial may pick a session just before it is retired (replace.go). The
// dial counts its stream (acquire) before it checks the retired flag, and
// retiring sets the flag before it reads the count, so either the dial sees
// the flag and picks again, or the retiring side sees the stream and waits
// for it.

// pick returns the agent for host with a stream counted on it, or the
// *DialError that refuses the dial.
func (s *Server) pick(host, addr string) (*agentConn, error) {
	for range 3 { // another pick only if a retired in between: rare
		a := s.routes.lookup(host)
		if a == nil {
			break
		}
		ok, retired := a.acquire(int64(s.cfg.MaxStreamsPerAgent))
		if ok {
			return a, nil
		}
		if !retired {
			return nil, s.limitError(LimitStreamsPerAgent, addr,
				fmt.Sprintf("agent %s at its stream limit (%d, %s)", a.node, s.cfg.MaxStreamsPerAgent, limitFlags[LimitStreamsPerAgent]))
		}
	}
	return nil, &DialError{Result: ResultNoAgent, Address: addr}
}

// acquire counts a new stream on a within max. It fails if a is at its
// limit or has been retired since it was looked up.
func (a *agentConn) acquire(max int64) (ok, retired bool) {
	if a.streams.Add(1) > max {
		a.release()
		return false, false
	}
	if a.retired.Load() {
		a.release()
		return false, true
	}
	return true, false
}

// release uncounts a stream of a.
func (a *agentConn) release() {
	if a.streams.Add(-1) == 0 && a.retired.Load() {
		select {
		case a.idle <- struct{}{}:
		default:
		}
	}
}
