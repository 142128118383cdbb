package mux

import (
	"errors"
	"fmt"
	"os"
)

// Sentinel errors. Callers branch on them with errors.Is; the errors a
// session or stream returns wrap them with context.
var (
	// ErrSessionClosed means Close was called on this side's session.
	ErrSessionClosed = errors.New("mux: session closed")

	// ErrConnLost means the connection under the session failed or the peer
	// hung up without a go away. The error also wraps the connection's own.
	ErrConnLost = errors.New("mux: connection lost")

	// ErrWriteTimeout means a write to the connection took longer than
	// Config.WriteTimeout; the session is ended rather than left hanging.
	ErrWriteTimeout = errors.New("mux: connection write timed out")

	// ErrRemoteGoAway means the peer sent a go away: it opens and accepts no
	// more streams (code 0), or it ended the session with an error code
	// (see GoAwayError).
	ErrRemoteGoAway = errors.New("mux: peer sent go away")

	// ErrProtocol matches every ProtocolError: the peer broke the wire format
	// or a limit, and the session was ended.
	ErrProtocol = errors.New("mux: protocol violation")

	// ErrFlood matches a ProtocolError whose Kind is one of the flood kinds:
	// the peer sent frames that cost work without carrying data faster than
	// the configured rate.
	ErrFlood = errors.New("mux: flood")

	// ErrStreamReset means the stream was aborted by Reset on either side, or
	// refused by the peer (for example because its accept backlog was full).
	ErrStreamReset = errors.New("mux: stream reset")

	// ErrStreamClosed means a Write after Close or CloseWrite on this side.
	ErrStreamClosed = errors.New("mux: stream closed for writing")

	// ErrStreamsExhausted means the session has used all 2^31 stream IDs of
	// its side; open a new session.
	ErrStreamsExhausted = errors.New("mux: stream IDs exhausted")
)

// Violation kinds: the Kind of a ProtocolError and the argument of
// Config.OnViolation. They are stable strings, fit for metric labels.
const (
	KindPingFlood       = "ping_flood"       // pings beyond Config.PingLimit
	KindStreamFlood     = "stream_flood"     // SYNs and RSTs beyond Config.StreamLimit
	KindEmptyFlood      = "empty_flood"      // frames that carry nothing beyond Config.EmptyFrameLimit
	KindBadVersion      = "bad_version"      // header version is not 0
	KindBadType         = "bad_type"         // frame type is not 0–3
	KindBadStreamID     = "bad_stream_id"    // stream 0, or a SYN with this side's parity
	KindDuplicateStream = "duplicate_stream" // a SYN for a stream that is open
	KindWindowExceeded  = "window_exceeded"  // data beyond the window we granted
	KindDataAfterFIN    = "data_after_fin"   // data on a stream the peer had half-closed
)

// ProtocolError is the reason a session ended because of what its peer sent.
// It matches ErrProtocol, and ErrFlood for the flood kinds.
type ProtocolError struct {
	// Kind is one of the Kind constants.
	Kind string
	// Detail says what exactly was wrong, for logs.
	Detail string
}

// Error implements error.
func (e *ProtocolError) Error() string {
	if e.Detail == "" {
		return "mux: protocol violation by peer: " + e.Kind
	}
	return "mux: protocol violation by peer: " + e.Kind + ": " + e.Detail
}

// Is reports whether target is ErrProtocol, or ErrFlood for a flood kind.
func (e *ProtocolError) Is(target error) bool {
	switch target {
	case ErrProtocol:
		return true
	case ErrFlood:
		return e.Kind == KindPingFlood || e.Kind == KindStreamFlood || e.Kind == KindEmptyFlood
	}
	return false
}

func violation(kind, format string, args ...any) *ProtocolError {
	return &ProtocolError{Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

// GoAwayError is the reason a session ended when the peer sent a go away
// with an error code, or hung up after a normal go away (Code 0). It matches
// ErrRemoteGoAway.
type GoAwayError struct {
	// Code is the go away reason: 0 normal, 1 protocol error, 2 internal
	// error; other values are passed through as the peer sent them.
	Code uint32
}

// Error implements error.
func (e *GoAwayError) Error() string {
	switch e.Code {
	case goAwayNormal:
		return "mux: peer went away"
	case goAwayProtocol:
		return "mux: peer ended the session: protocol error"
	case goAwayInternal:
		return "mux: peer ended the session: internal error"
	}
	return fmt.Sprintf("mux: peer ended the session with go away code %d", e.Code)
}

// Is reports whether target is ErrRemoteGoAway.
func (e *GoAwayError) Is(target error) bool { return target == ErrRemoteGoAway }

// timeoutError is what Read and Write return when a stream deadline passes.
// It is a net.Error with Timeout() true and matches os.ErrDeadlineExceeded,
// as net.Conn promises.
type timeoutError struct{}

func (timeoutError) Error() string   { return "mux: i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func (timeoutError) Is(target error) bool { return target == os.ErrDeadlineExceeded }

var errTimeout error = timeoutError{}
