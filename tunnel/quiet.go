package tunnel

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Idle tunnels during a drain. A draining agent's tunnels are either in
// use — a request waiting for its answer, an exec streaming output — or
// kube-apiserver's keep-alive connections between requests, which it keeps
// for minutes. The first must finish; the second should be closed at once,
// so that the drain ends and the next request dials a new tunnel through
// another agent.
//
// The bytes are all a tunnel sees (they are TLS), so it goes by their rhythm:
// a tunnel whose node side sent last — the answer came — and which has been
// quiet since for DrainIdle is taken for an idle keep-alive, and closed
// the way an HTTP server closes one: its node side stops reading, so the
// copy path half-closes toward the server, kube-apiserver sees EOF on an
// idle connection, and drops it before it sends on it again. A tunnel
// whose last bytes went toward the node (a request not yet answered) is
// never closed this way.
//
// A connection that is never quiet that long (fifty webhook calls a second
// on one HTTP/2 connection) would hold the drain to its timeout and be cut
// mid-request then. So in the last quarter of DrainTimeout the quiet that
// counts shrinks to drainLastQuiet: such a connection is closed in its
// next pause between an answer and the next request. The one race left is
// the one every HTTP server's idle close has: a request sent in the same
// instant as the close. What stays quiet longer than DrainIdle while in use
// (an interactive exec at its prompt) is closed too; raising DrainIdle
// keeps it longer, up to DrainTimeout.

// drainLastQuiet is the quiet that marks a pause between requests in the
// last quarter of a drain: longer than the gaps inside one answer, shorter
// than the gaps between requests of a peer sending fifty a second on one
// connection (20 ms apart).
const drainLastQuiet = 5 * time.Millisecond

// drainQuiet returns, for a drain elapsed into timeout, how long a tunnel
// must have been quiet to be closed, and how soon to look again.
func drainQuiet(idle, timeout, elapsed time.Duration) (quiet, every time.Duration) {
	if elapsed >= timeout-timeout/4 {
		return drainLastQuiet, drainLastQuiet / 5
	}
	return idle, min(idle/4, 250*time.Millisecond)
}

// tunnelUse is one open tunnel as a drain sees it.
type tunnelUse struct {
	last     atomic.Int64 // time.Now().UnixNano() of the last bytes either way
	fromNode atomic.Bool  // those bytes came from the node
	closed   atomic.Bool
	node     net.Conn // the tunnel's connection to its destination
}

func (u *tunnelUse) moved(fromNode bool) {
	u.fromNode.Store(fromNode)
	u.last.Store(time.Now().UnixNano())
}

// closeIdle stops reading from the node side, once: the copy path reads
// EOF there and half-closes toward the server, as for a node that hung up.
// A connection that cannot stop reading alone is closed.
func (u *tunnelUse) closeIdle() bool {
	if u.closed.Swap(true) {
		return false
	}
	if cr, ok := u.node.(interface{ CloseRead() error }); ok && cr.CloseRead() == nil {
		return true
	}
	u.node.Close()
	return true
}

// useCounter counts a direction's bytes in c (which may be nil) and marks
// u as used.
type useCounter struct {
	c        counter
	u        *tunnelUse
	fromNode bool
}

func (uc useCounter) Add(n float64) {
	if uc.c != nil {
		uc.c.Add(n)
	}
	uc.u.moved(uc.fromNode)
}

// tunnelSet is a session's open tunnels.
type tunnelSet struct {
	mu  sync.Mutex
	all map[*tunnelUse]struct{}
}

// track adds a tunnel to the set, its dial answer counting as the node's
// first bytes; the returned function removes it.
func (s *tunnelSet) track(node net.Conn) (*tunnelUse, func()) {
	u := &tunnelUse{node: node}
	u.moved(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.all == nil {
		s.all = make(map[*tunnelUse]struct{})
	}
	s.all[u] = struct{}{}
	return u, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.all, u)
	}
}

// closeQuiet closes every tunnel whose node side sent last and that has
// been quiet for at least quiet at now, and returns how many it closed.
func (s *tunnelSet) closeQuiet(now time.Time, quiet time.Duration) int {
	cutoff := now.Add(-quiet).UnixNano()
	var idle []*tunnelUse
	s.mu.Lock()
	for u := range s.all {
		if u.fromNode.Load() && u.last.Load() <= cutoff {
			idle = append(idle, u)
		}
	}
	s.mu.Unlock()
	n := 0
	for _, u := range idle { // closing is I/O: not under the lock
		if u.closeIdle() {
			n++
		}
	}
	return n
}
