package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"
)

// Result is the outcome of a tunneled dial. The values up to ResultError
// travel on the wire in dial responses (PROTOCOL.md); the others arise on the
// server. Result.String gives the metric label.
type Result uint8

// Dial results.
const (
	ResultOK          Result = 0 // dialed; bytes flow
	ResultRefused     Result = 1 // the destination refused the connection
	ResultTimeout     Result = 2 // the dial did not finish within its deadline
	ResultUnreachable Result = 3 // no route to the destination from the node
	ResultForbidden   Result = 4 // the agent's destination policy refused it
	ResultError       Result = 5 // any other failure, with the node's error text
	ResultNoAgent     Result = 6 // no registered agent can reach the destination
	ResultDraining    Result = 7 // the server is shutting down
	ResultBadRequest  Result = 8 // the destination is malformed
	ResultLimit       Result = 9 // a server limit refused it (limits.go); Detail says which
)

var resultNames = [...]string{"ok", "refused", "timeout", "unreachable", "forbidden", "error", "no_agent", "draining", "bad_request", "limit"}

// String returns the result's label, as used in metrics and logs.
func (r Result) String() string {
	if int(r) < len(resultNames) {
		return resultNames[r]
	}
	return fmt.Sprintf("result(%d)", r)
}

// Results returns every Result in order, for a metric that shows each
// label value from zero (tunnel/konnectivity's dials by result).
func Results() []Result {
	rs := make([]Result, len(resultNames))
	for i := range rs {
		rs[i] = Result(i)
	}
	return rs
}

func (r Result) onWire() bool { return r <= ResultError }

// DialError is a failed tunneled dial. Its Error text is written verbatim
// into the CONNECT status line, because kube-apiserver logs only that line.
type DialError struct {
	Result  Result
	Address string        // the destination as requested
	Timeout time.Duration // for ResultTimeout: the deadline that passed
	Detail  string        // the node's or server's own error text, if any
}

// Error implements error.
func (e *DialError) Error() string {
	switch e.Result {
	case ResultNoAgent:
		host, _, err := net.SplitHostPort(e.Address)
		if err != nil {
			host = e.Address
		}
		return "no agent for " + host
	case ResultRefused:
		return "dial " + e.Address + ": connection refused"
	case ResultTimeout:
		return fmt.Sprintf("dial %s timed out after %s", e.Address, e.Timeout)
	case ResultForbidden:
		return "destination not allowed: " + e.Address + detail(e.Detail)
	case ResultDraining:
		return "server draining"
	case ResultBadRequest:
		return "bad destination " + e.Address + detail(e.Detail)
	case ResultLimit:
		return e.Detail
	}
	if e.Detail == "" {
		return "dial " + e.Address + ": " + e.Result.String()
	}
	return "dial " + e.Address + ": " + e.Detail
}

func detail(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// HTTPStatus returns the status code the CONNECT frontend answers with.
func (e *DialError) HTTPStatus() int {
	switch e.Result {
	case ResultTimeout:
		return http.StatusGatewayTimeout
	case ResultForbidden:
		return http.StatusForbidden
	case ResultDraining, ResultLimit:
		return http.StatusServiceUnavailable
	case ResultBadRequest:
		return http.StatusBadRequest
	}
	return http.StatusBadGateway
}

// classifyDialError maps an error from net.Dialer on the node to a result.
func classifyDialError(err error) Result {
	var ne net.Error
	var fe *forbiddenError
	switch {
	case errors.As(err, &fe):
		return ResultForbidden
	case errors.Is(err, syscall.ECONNREFUSED):
		return ResultRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return ResultTimeout
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return ResultUnreachable
	}
	return ResultError
}

// limitFlags names, by limit label, the tunnel-server flag that sets the
// limit. A refusal names it, in its log line ("flag") and in what the
// client is told, so that whoever reads the refusal knows what would
// change it.
var limitFlags = map[string]string{
	LimitAgents:           "--max-agents",
	LimitStreamsPerAgent:  "--max-streams-per-agent",
	LimitPendingDials:     "--max-pending-dials",
	LimitHandshakeTimeout: "--handshake-timeout",
	LimitHeaderTimeout:    "--connect-header-timeout",
	LimitHeaderSize:       "--max-connect-header-bytes",
	LimitDialTimeout:      "--dial-timeout",
	LimitAcceptRate:       "--agent-accept-rate",
	LimitAgentHandshakes:  "--max-agent-handshakes",
	LimitFrontendConns:    "--max-frontend-connections",
}

// ConfigError is a setting that cannot work. Field names the config
// struct's field, so that a command can name the flag bound to it.
type ConfigError struct {
	Field string
	Msg   string
}

func (e *ConfigError) Error() string { return "tunnel: " + e.Field + ": " + e.Msg }

func checkPositive(field string, d time.Duration) error {
	if d <= 0 {
		return &ConfigError{Field: field, Msg: fmt.Sprintf("must be positive, not %s", d)}
	}
	return nil
}
