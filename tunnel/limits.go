package tunnel

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/tunnel-project/tunnel/tunnel/mux"
)

// Bounds (DESIGN.md section 4): every resource the server holds for someone
// else is capped, and every cap that refuses something says so — in the
// log, to the CONNECT client or agent as a status and reason, and in
// tunnel_server_limit_rejections_total{limit}.
//
// Session memory. What one agent session can make the server buffer is
// bounded by the session layer (package mux, spec.md "Memory"): every
// stream starts with the protocol's 256 KiB window, and windows grow, up to
// the stream window, only from a session-wide budget of further credit. The
// server sets
//
//	stream window = clamp(SessionWindowBudget / MaxStreamsPerAgent, 256 KiB, 16 MiB)
//	session budget = SessionWindowBudget - MaxStreamsPerAgent × 256 KiB
//
// so that a session's dial streams hold at most SessionWindowBudget (plus
// 256 KiB for each of the few streams an agent may open itself: the
// control stream and serverAcceptBacklog more). Validate refuses a budget
// below MaxStreamsPerAgent × 256 KiB instead of exceeding it silently. The
// budget is a ceiling, not a reservation: memory is taken as data arrives,
// within 10 % of the bytes buffered, and an idle stream holds none.

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
	minStreamWindow = 256 << 10 // the protocol's initial stream window, its minimum
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

// sessionConfig returns the session settings of an agent connection from
// remote: the windows above, and violations logged and counted.
func (s *Server) sessionConfig(remote string) *mux.Config {
	c := sessionConfig(s.cfg.KeepaliveTimeout, s.log.With("remote", remote)) // transport.go
	c.AcceptBacklog = serverAcceptBacklog
	c.OpenBacklog = agentAcceptBacklog // dials waiting for the agent's ACK
	c.MaxStreamWindow = s.window
	c.SessionReceiveBudget = max(s.cfg.SessionWindowBudget-int64(s.cfg.MaxStreamsPerAgent)*minStreamWindow, 0)
	c.OnViolation = func(kind string) { s.metrics.violations.WithLabelValues(kind).Inc() }
	return c
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
