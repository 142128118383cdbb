package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Dial opens a tunneled connection to addr ("host:port") through the agent
// that the routing table picks. Failures are *DialError values.
func (s *Server) Dial(ctx context.Context, addr string) (net.Conn, error) {
	id := s.dialID.Add(1)
	start := time.Now()
	var (
		c    net.Conn
		node string
		err  error
	)
	if s.tunnels.begin(false) {
		if c, node, err = s.dial(ctx, id, addr); err != nil {
			s.tunnels.end()
		}
	} else {
		err = &DialError{Result: ResultDraining, Address: addr}
	}
	s.metrics.dials.inc(resultOf(err))
	if resultOf(err) == ResultTimeout {
		s.limited(LimitDialTimeout)
	}
	if err != nil {
		s.log.Warn("dial failed", "dial", id, "node", node, "dest", addr, "err", err.Error())
		return nil, err
	}
	s.log.Debug("dial ok", "dial", id, "node", node, "dest", addr, "took", time.Since(start))
	return c, nil
}

func (s *Server) dial(ctx context.Context, id uint64, addr string) (net.Conn, string, error) {
	host, _, err := splitTarget(addr)
	if err != nil {
		return nil, "", &DialError{Result: ResultBadRequest, Address: addr, Detail: err.Error()}
	}
	if !s.pending.enter() {
		return nil, "", s.limitError(LimitPendingDials, addr, fmt.Sprintf("too many dials in progress (%d, %s)", s.cfg.MaxPendingDials, limitFlags[LimitPendingDials]))
	}
	defer s.pending.leave()
	start := time.Now()
	a, err := s.pick(host, addr) // pick.go
	if err != nil {
		// No agent: perhaps a node the SSH fallback serves (ssh_fallback.go).
		return s.dialFallback(ctx, id, host, addr, err)
	}
	c, err := s.dialVia(ctx, a, id, addr, start)
	if err != nil {
		a.release()
	}
	return c, a.node, err
}

// dialVia sends a dial request down a new stream of agent a and waits for
// its answer, within the dial timeout plus a grace period for the answer to
// travel.
func (s *Server) dialVia(ctx context.Context, a *agentConn, id uint64, addr string, start time.Time) (net.Conn, error) {
	timeout := s.cfg.DialTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	req := appendDialRequest(nil, dialRequest{ID: id, Timeout: timeout, Address: addr})
	st, err := a.sess.Open(ctx, req) // the stream opens with the request: one write
	if err != nil {
		return nil, &DialError{Result: ResultError, Address: addr, Detail: "open stream to agent: " + err.Error()}
	}
	sent := time.Now()
	s.metrics.proxyTime.Observe(sent.Sub(start).Seconds())
	st.SetDeadline(sent.Add(timeout + answerGrace))
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	resp, err := readDialResponse(st)
	if err == nil { // the agent answered, whatever the result
		s.metrics.connectTime.Observe(time.Since(sent).Seconds())
	}
	if err == nil && resp.Result != ResultOK {
		err = &DialError{Result: resp.Result, Address: addr, Timeout: timeout, Detail: resp.Message}
	} else if err != nil {
		err = streamDialError(ctx, err, addr, timeout)
	}
	if err != nil {
		abort(st)
		return nil, err
	}
	st.SetDeadline(time.Time{})
	s.metrics.streamsOpen.Inc()
	return &streamConn{Conn: st, agent: a, id: id, open: s.metrics.streamsOpen, end: s.tunnels.end}, nil
}

// answerGrace is how long past the dial timeout the server waits for the
// agent's answer before it reports the timeout itself.
const answerGrace = 2 * time.Second

func readDialResponse(st net.Conn) (dialResponse, error) {
	payload, err := readFrame(st, frameDialResponse)
	if err != nil {
		return dialResponse{}, err
	}
	return decodeDialResponse(payload)
}

// streamDialError explains a failure of the dial exchange itself.
func streamDialError(ctx context.Context, err error, addr string, timeout time.Duration) error {
	if ctx.Err() != nil {
		return &DialError{Result: ResultError, Address: addr, Detail: "canceled: " + context.Cause(ctx).Error()}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &DialError{Result: ResultTimeout, Address: addr, Timeout: timeout}
	}
	return &DialError{Result: ResultError, Address: addr, Detail: fmt.Sprintf("agent stream failed: %v", err)}
}

// streamConn is a tunneled connection on the server. CloseWrite half-closes
// (a session stream and an SSH channel both have CloseWrite), Reset aborts
// (a session stream's RST), and Close releases the stream's place in its
// agent's load count.
type streamConn struct {
	net.Conn
	agent *agentConn
	id    uint64           // the dial's ID
	open  prometheus.Gauge // the server's open-streams gauge
	end   func()           // ends the server's count of the tunnel
	once  sync.Once
}

func (c *streamConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok { // an SSH channel: Close would end both ways
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Reset aborts the stream where the transport can say so (copy.go abort).
func (c *streamConn) Reset() error {
	if r, ok := c.Conn.(resetter); ok {
		return r.Reset()
	}
	return nil
}

// Shrink lets the copy path release the stream's idle receive buffer.
func (c *streamConn) Shrink() {
	if s, ok := c.Conn.(shrinker); ok {
		s.Shrink()
	}
}

func (c *streamConn) Close() error {
	c.once.Do(func() { c.agent.release(); c.open.Dec(); c.end() })
	return c.Conn.Close()
}

// resultOf returns the result of a dial that returned err.
func resultOf(err error) Result {
	var de *DialError
	switch {
	case err == nil:
		return ResultOK
	case errors.As(err, &de):
		return de.Result
	}
	return ResultError
}
