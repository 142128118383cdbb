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
// A connection that is never quiet that long would hold the drain to its
// timeout and be cut mid-request then: fifty webhook calls a second on one
// HTTP/2 connection. Such a connection has a rhythm of its own: request,
// answer, pause, many times a second. A tunnel whose node began at least
// busyAnswers answers in each of the last two whole seconds is taken for
// one, and closed in its next pause of drainLastQuiet after an answer,
// from the start of the drain. Output the node sends unprompted (logs -f,
// an exec's output) is no answer, and a session's opening handshakes are
// too few and too short to count. In the last quarter of DrainTimeout
// every tunnel is held to that short pause: what is still open then is
// closed in its next pause between an answer and the next request rather
// than cut at the timeout. The one race left is the one every HTTP
// server's idle close has: a request sent in the same instant as the
// close. What stays quiet longer than DrainIdle while in use (an
// interactive exec at its prompt) is closed too, and so is one typed into
// faster than busyAnswers a second for two seconds; raising DrainIdle
// keeps the first longer, up to DrainTimeout.

// drainLastQuiet is the quiet that marks a pause between requests in the
// last quarter of a drain: longer than the gaps inside one answer, shorter
// than the gaps between requests of a peer sending fifty a second on one
// connection (20 ms apart).
const drainLastQuiet = 5 * time.Millisecond

// busyAnswers is the answers a second, in each of two whole seconds, that
// mark a tunnel carrying request after request: more than an exec's
// opening exchanges, or a person typing, make.
const busyAnswers = 10

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
	m        *mover   // nil if the tunnel cannot move (move.go)
	id       uint64   // the dial's ID
	addr     string   // the destination as the server asked for it

	mu      sync.Mutex
	answers [3]secondCount // answers begun, by second, for busy
}

// secondCount counts events in one whole second (Unix time).
type secondCount struct {
	sec int64
	n   int
}

func (u *tunnelUse) moved(fromNode bool) {
	now := time.Now()
	if was := u.fromNode.Swap(fromNode); fromNode && !was {
		u.answered(now.Unix())
	}
	u.last.Store(now.UnixNano())
}

// answered counts an answer begun in second sec: node bytes after bytes
// toward the node.
func (u *tunnelUse) answered(sec int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	c := &u.answers[sec%int64(len(u.answers))]
	if c.sec != sec {
		*c = secondCount{sec: sec}
	}
	c.n++
}

// busy reports whether the node began at least busyAnswers answers in
// each of the two whole seconds before sec.
func (u *tunnelUse) busy(sec int64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range []int64{sec - 1, sec - 2} {
		if c := u.answers[s%int64(len(u.answers))]; c.sec != s || c.n < busyAnswers {
			return false
		}
	}
	return true
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
func (s *tunnelSet) track(node net.Conn, m *mover, id uint64, addr string) (*tunnelUse, func()) {
	u := &tunnelUse{node: node, m: m, id: id, addr: addr}
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

// closeAll closes the node side of every tunnel: the copy path then ends
// each of them, even one whose client has finished and whose node keeps
// its side open and silent.
func (s *tunnelSet) closeAll() {
	s.mu.Lock()
	nodes := make([]net.Conn, 0, len(s.all))
	for u := range s.all {
		nodes = append(nodes, u.node)
	}
	s.mu.Unlock()
	for _, c := range nodes {
		c.Close()
	}
}

// closeQuiet closes every tunnel whose node side sent last and that has
// been quiet at now for at least quiet, or, if it is busy, for
// drainLastQuiet. It returns how many it closed of each, and whether a
// busy tunnel is left open: its next pause must be caught within
// milliseconds.
func (s *tunnelSet) closeQuiet(now time.Time, quiet time.Duration) (idle, busy int, busyLeft bool) {
	type closing struct {
		u    *tunnelUse
		busy bool
	}
	var toClose []closing
	s.mu.Lock()
	for u := range s.all {
		if u.m != nil && u.m.state.Load() == moveStopping {
			continue // on the move
		}
		need := quiet
		if u.busy(now.Unix()) {
			need = min(quiet, drainLastQuiet)
		}
		switch {
		case u.fromNode.Load() && u.last.Load() <= now.Add(-need).UnixNano():
			toClose = append(toClose, closing{u, need < quiet})
		case need < quiet:
			busyLeft = true
		}
	}
	s.mu.Unlock()
	for _, c := range toClose { // closing is I/O: not under the lock
		switch {
		case !c.u.closeIdle():
		case c.busy:
			busy++
		default:
			idle++
		}
	}
	return idle, busy, busyLeft
}
