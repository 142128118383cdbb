package tunnel

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
)

// Bounds (DESIGN.md section 4): every resource the server holds for someone
// else is capped, and every cap that refuses something says so — in the
// log, to the CONNECT client or agent as a status and reason, and in
// tunnel_server_limit_rejections_total{limit}.
//
// Stream windows. yamux (v0.1.2) bounds memory per stream, not per session:
// a stream's receive buffer holds at most its window, so what one agent
// session can make the server buffer is streams × window. The server turns
// SessionWindowBudget into a window with the stream limit:
//
//	window = clamp(SessionWindowBudget / MaxStreamsPerAgent, 256 KiB, 16 MiB)
//
// 256 KiB is yamux's initial window, below which it will not go; 16 MiB is
// far past what any link needs. Validate refuses a budget below
// MaxStreamsPerAgent × 256 KiB instead of exceeding it silently, so that
// MaxStreamsPerAgent × window ≤ SessionWindowBudget always holds. The
// window is a ceiling, not a reservation: yamux allocates as data arrives,
// so idle streams cost nothing. The agent keeps yamux's 1 MiB window.

// Label values of tunnel_server_limit_rejections_total{limit}.
const (
	LimitAgents           = "agents"            // MaxAgents: a registration refused
	LimitStreamsPerAgent  = "streams_per_agent" // MaxStreamsPerAgent: a dial refused with 503
	LimitPendingDials     = "pending_dials"     // MaxPendingDials: a dial refused with 503
	LimitHandshakeTimeout = "handshake_timeout" // HandshakeTimeout: an agent's TLS handshake or hello cut off
	LimitHeaderTimeout    = "header_timeout"    // HeaderTimeout: a CONNECT request (or its TLS handshake) cut off
	LimitHeaderSize       = "header_size"       // MaxHeaderBytes: a CONNECT request refused with 431
	LimitDialTimeout      = "dial_timeout"      // DialTimeout: a dial answered with 504
	LimitAcceptRate       = "accept_rate"       // AgentAcceptRate: an agent connection closed before TLS, its turn too far away
	LimitAgentHandshakes  = "agent_handshakes"  // MaxAgentHandshakes: an agent connection closed at accept
	LimitFrontendConns    = "frontend_conns"    // MaxFrontendConns: a frontend connection refused at accept
)

var limitNames = []string{LimitAgents, LimitStreamsPerAgent, LimitPendingDials, LimitHandshakeTimeout,
	LimitHeaderTimeout, LimitHeaderSize, LimitDialTimeout, LimitAcceptRate, LimitAgentHandshakes, LimitFrontendConns}

const (
	minStreamWindow = 256 << 10 // yamux's initial stream window, its minimum
	maxStreamWindow = 16 << 20
)

// validateLimits checks the count limits and the window budget.
func (c *ServerConfig) validateLimits() error {
	for _, l := range []struct {
		field string
		n     int
	}{{"MaxAgents", c.MaxAgents}, {"MaxStreamsPerAgent", c.MaxStreamsPerAgent}, {"MaxPendingDials", c.MaxPendingDials},
		{"MaxAgentHandshakes", c.MaxAgentHandshakes}, {"MaxFrontendConns", c.MaxFrontendConns}} {
		if l.n < 1 {
			return &ConfigError{Field: l.field, Msg: fmt.Sprintf("must be at least 1, not %d", l.n)}
		}
	}
	if need := int64(c.MaxStreamsPerAgent) * minStreamWindow; c.SessionWindowBudget < need {
		return &ConfigError{Field: "SessionWindowBudget", Msg: fmt.Sprintf(
			"%d bytes is less than %d streams per agent × the 256 KiB minimum window (%d bytes)",
			c.SessionWindowBudget, c.MaxStreamsPerAgent, need)}
	}
	return nil
}

// streamWindow returns the receive window of each agent stream.
func (c *ServerConfig) streamWindow() uint32 {
	w := c.SessionWindowBudget / int64(max(c.MaxStreamsPerAgent, 1))
	return uint32(min(max(w, minStreamWindow), maxStreamWindow))
}

// gate counts holders of a limited resource.
type gate struct {
	n   atomic.Int64
	max int64
}

// enter takes a place, or reports false if none is left.
func (g *gate) enter() bool {
	if g.n.Add(1) > g.max {
		g.n.Add(-1)
		return false
	}
	return true
}

func (g *gate) leave() { g.n.Add(-1) }

// limited counts one refusal by limit.
func (s *Server) limited(limit string) {
	s.metrics.limits.WithLabelValues(limit).Inc()
}

// limitError counts a dial refused by limit and returns its error, which
// the frontend answers with 503 and msg.
func (s *Server) limitError(limit, addr, msg string) error {
	s.limited(limit)
	return &DialError{Result: ResultLimit, Address: addr, Detail: msg}
}

// handshakeLimit counts an agent connection that failed its handshake or
// hello because HandshakeTimeout (ctx) ran out.
func (s *Server) handshakeLimit(ctx context.Context) {
	if ctx.Err() != nil {
		s.limited(LimitHandshakeTimeout)
	}
}

// headerLimit counts a CONNECT request cut off by HeaderTimeout (err is a
// timeout) or refused by MaxHeaderBytes (status 431).
func (s *Server) headerLimit(err error, status int) {
	switch {
	case status == http.StatusRequestHeaderFieldsTooLarge:
		s.limited(LimitHeaderSize)
	case isTimeout(err):
		s.limited(LimitHeaderTimeout)
	}
}
