package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// What a listener spends before it knows who is calling (README "Threat
// model"). Anyone who can reach a port can open connections to it, so:
//
//   - Every listener caps the connections it holds at once (connCap): the
//     agent port those not yet registered (MaxAgentHandshakes), the
//     frontends all of theirs, tunnels included (MaxFrontendConns). A
//     connection over the cap is refused at once, before any handshake.
//   - On the agent port a connection takes a turn at the handshake rate
//     (AgentAcceptRate, after a burst of AgentAcceptBurst: a restarted
//     server's fleet reconnecting) only once its first bytes (a TLS
//     ClientHello, an SSH version line) have arrived: connections that
//     send nothing cost a place under the cap for firstBytesTimeout, and
//     no turn.
//   - A connection whose turn is more than acceptQueue away is closed
//     before TLS: it costs nothing, and a real agent tries again after its
//     backoff. The accept loop itself never waits, so nothing queues in the
//     kernel's backlog where no bound can see it.
//   - One source address may have at most a quarter second's worth of
//     connections waiting for their turn (turnQueue); more are closed
//     without taking a turn. A flood from a few addresses then holds a
//     short queue, and agents elsewhere wait behind it for a quarter of a
//     second at most, instead of being shed most of the time. A fleet
//     behind one NAT address still gets every turn nobody else wants.

// connCap is a listener's bound on the connections it holds at once.
type connCap struct {
	gate
	limit string // label in tunnel_server_limit_rejections_total
}

// firstBytesTimeout bounds the wait for an agent connection's first bytes
// (within HandshakeTimeout). Clients send them the moment they connect;
// this leaves room for a retransmission or two.
const firstBytesTimeout = 3 * time.Second

// acceptQueue is how long an agent connection may wait for its turn.
const acceptQueue = time.Second

// newAcceptLimiter returns the handshake rate limiter for perSecond
// (ServerConfig.AgentAcceptRate) after a burst (AgentAcceptBurst), or nil
// for no bound. It starts full: a restarted server takes its fleet back at
// once.
func newAcceptLimiter(perSecond float64, burst int) *rate.Limiter {
	if perSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perSecond), max(burst, 1))
}

// awaitTurn waits until agent connection c has sent its first bytes and
// its turn at the handshake rate has come. It reports false, having
// counted and logged why, if c hung up or stayed silent, if its turn is
// too far away, or if ctx ended.
func (s *Server) awaitTurn(ctx context.Context, c net.Conn) bool {
	remote := c.RemoteAddr().String()
	wait := firstBytesTimeout
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d))
	}
	if err := waitFirstBytes(c, wait); err != nil {
		if isTimeout(err) {
			s.limited(LimitHandshakeTimeout)
		}
		s.log.Debug("agent connection closed before TLS: no first bytes", "remote", remote, "err", err)
		return false
	}
	if s.accepts == nil {
		return true
	}
	ip := remoteIP(c)
	if !s.turns.enter(ip) {
		s.limited(LimitAcceptRate)
		s.log.Debug("agent connection closed before TLS: its address has its share of the accept queue", "remote", remote, "flag", limitFlags[LimitAcceptRate])
		return false
	}
	defer s.turns.leave(ip)
	now := time.Now()
	r := s.accepts.ReserveN(now, 1)
	wait = r.DelayFrom(now)
	if wait > acceptQueue {
		r.CancelAt(now)
		s.limited(LimitAcceptRate)
		s.log.Debug("agent connection closed before TLS: over the accept rate", "remote", remote, "flag", limitFlags[LimitAcceptRate])
		return false
	}
	if wait == 0 {
		return true
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// turnQueue counts, by source address, the agent connections waiting for
// their turn, and holds each address to its share.
type turnQueue struct {
	share   int // most connections one address may have waiting
	mu      sync.Mutex
	waiting map[netip.Addr]int
}

func newTurnQueue(perSecond float64) turnQueue {
	return turnQueue{share: int(max(math.Ceil(perSecond/4), 4)), waiting: make(map[netip.Addr]int)}
}

// enter counts a connection from ip as waiting, or reports false if ip
// already has its share waiting.
func (q *turnQueue) enter(ip netip.Addr) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.waiting[ip] >= q.share {
		return false
	}
	q.waiting[ip]++
	return true
}

func (q *turnQueue) leave(ip netip.Addr) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.waiting[ip]--; q.waiting[ip] <= 0 {
		delete(q.waiting, ip)
	}
}

// remoteIP returns the address c comes from; the zero Addr, one shared
// queue, for connections that are not IP.
func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// isTimeout reports whether err is a deadline that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errHungUp is a connection closed by its peer before it sent anything.
var errHungUp = errors.New("peer hung up")

// waitFirstBytes waits up to d for c to have bytes to read, consuming none.
// Connections it cannot wait on that way (not sockets, or closed ones)
// pass at once; the handshake then fails on them.
func waitFirstBytes(c net.Conn, d time.Duration) error {
	rc := rawConn(c)
	if rc == nil {
		return nil
	}
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	var n int
	var perr error
	err := rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return perr != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return err
	case perr != nil:
		return perr
	case n == 0:
		return errHungUp
	}
	return nil
}

// refuseFrontend answers a frontend connection over MaxFrontendConns. A
// plain (unix-socket) connection gets a 503 it can log, after its request
// has been read (answering first would make the client's write of it fail
// and hide the answer); a TLS one is closed before its handshake, which
// would cost more than the answer is worth. At most maxRefusing answers
// are in progress; connections beyond those are closed at once.
func (s *Server) refuseFrontend(c net.Conn) {
	if _, isTLS := c.(*tls.Conn); isTLS || !s.refusing.enter() {
		c.Close()
		return
	}
	ok := s.goConn(c, nil, func(func() func()) { // closes c if the server has closed
		defer s.refusing.leave()
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		br := s.headerReader(c)
		defer s.putHeaderReader(br)
		readConnect(br, s.cfg.MaxHeaderBytes)
		s.answer(c, http.StatusServiceUnavailable, fmt.Sprintf("server at its limit of %d frontend connections (%s)", s.cfg.MaxFrontendConns, limitFlags[LimitFrontendConns]))
	})
	if !ok {
		s.refusing.leave()
	}
}

// maxRefusing bounds the refusals refuseFrontend answers at once.
const maxRefusing = 16

// cappedListener applies a connCap to a listener whose connections are
// served by someone else (the gRPC frontend's grpc.Server): Accept closes
// the connections over the cap, and a connection's Close gives its place
// back.
type cappedListener struct {
	net.Listener
	s   *Server
	cap *connCap
}

func (l *cappedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.s.admitConn(l.cap, c, nil) { // closed, not answered: its protocol is not ours to speak
			return &cappedConn{Conn: c, leave: l.cap.leave}, nil
		}
	}
}

// cappedConn gives its place under a connCap back when it is closed.
type cappedConn struct {
	net.Conn
	leave func()
	once  sync.Once
}

func (c *cappedConn) Close() error {
	c.once.Do(c.leave)
	return c.Conn.Close()
}

// admitConn takes a place for c under cap, or refuses c (counted and
// logged; answered by refuse, or closed if refuse is nil) and reports
// false.
func (s *Server) admitConn(cap *connCap, c net.Conn, refuse func(net.Conn)) bool {
	if cap.enter() {
		return true
	}
	s.limited(cap.limit)
	s.log.Debug("connection refused: listener at its cap", "limit", cap.limit, "max", cap.max, "flag", limitFlags[cap.limit], "remote", remoteName(c))
	if refuse != nil {
		refuse(c)
	} else {
		c.Close()
	}
	return false
}
