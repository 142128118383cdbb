package mux

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config tunes a session. Start from DefaultConfig; a nil *Config given to
// Client or Server means DefaultConfig().
type Config struct {
	// AcceptBacklog is how many streams the peer may open that Accept has
	// not yet returned; a SYN beyond it is answered with RST at once and
	// costs nothing more. Default 256.
	AcceptBacklog int

	// OpenBacklog is how many of this side's opens may wait for the peer's
	// ACK at a time; Open blocks beyond it. Match it to the peer's
	// AcceptBacklog: opens beyond that are reset by the peer, and fewer cap
	// the open rate at OpenBacklog per round trip. (hashicorp/yamux ties
	// both to its one AcceptBacklog.) Default 256, yamux's default backlog.
	OpenBacklog int

	// MaxStreamWindow is the largest receive window, in bytes, a stream
	// grows to. Windows start at the protocol's 256 KiB and double each time
	// the reader has consumed half of one, while SessionReceiveBudget allows.
	// Default 1 MiB; at least 256 KiB, at most 1 GiB.
	MaxStreamWindow uint32

	// SessionReceiveBudget is how many bytes of window credit, in total over
	// all streams of the session, may be granted beyond the 256 KiB each
	// stream starts with. Together this bounds what a peer can make the
	// session buffer: at most 256 KiB per stream in the session's table plus
	// this budget (spec.md, "Memory"). Zero keeps every window at 256 KiB.
	// Default 64 MiB.
	SessionReceiveBudget int64

	// WriteTimeout bounds every write to the connection (through its
	// SetWriteDeadline). A write that does not finish in time ends the
	// session with ErrWriteTimeout instead of hanging. Default 10 s.
	WriteTimeout time.Duration

	// MaxFrame is the largest data frame body, in bytes, that Write sends; a
	// longer Write is split. It bounds how long one stream holds the
	// connection and how much a receiver reads before waking a reader.
	// Default 64 KiB: 256 KiB measured no faster over TCP or TLS loopback,
	// 16 KiB about 20% slower for large writes (BenchmarkThroughput).
	// Between 1 KiB and 16 MiB.
	MaxFrame int

	// PingLimit is the rate of ping frames (requests and answers) the peer
	// may send. Each request costs an answer, so beyond the limit the session
	// ends with KindPingFlood. Default 100 per second, burst 100.
	PingLimit FloodLimit

	// StreamLimit is the rate of SYN and RST frames the peer may send: stream
	// churn costs an allocation, a table entry and often an answer. Beyond it
	// the session ends with KindStreamFlood. Default 1000 per second, burst
	// 1000.
	StreamLimit FloodLimit

	// EmptyFrameLimit is the rate of frames that carry nothing: window
	// updates and data frames with no flags and zero length, flags that
	// change nothing (a second ACK or FIN), bodiless frames other than RST
	// for streams that do not exist, and repeated go aways. Late frames for streams that just
	// closed are normal, so the default is generous: 2000 per second, burst
	// 4000. Beyond it the session ends with KindEmptyFlood.
	EmptyFrameLimit FloodLimit

	// OnViolation, if set, is called once with the Kind when the session
	// ends because of a ProtocolError, for the caller to log and count. It
	// runs on the session's read loop after the session has ended (Close may
	// already have returned), so it must return quickly. Default nil.
	OnViolation func(kind string)

	// Logger receives the session's few log lines (its end, violations).
	// Nil discards them. Default nil.
	Logger *slog.Logger
}

// FloodLimit is a token bucket: Rate events per second on average, and up to
// Burst at once.
type FloodLimit struct {
	// Rate is the sustained number of frames per second allowed; > 0.
	Rate float64
	// Burst is how many frames may arrive back to back; >= 1.
	Burst int
}

// DefaultConfig returns the default settings described on each Config field.
func DefaultConfig() *Config {
	return &Config{
		AcceptBacklog:        256,
		OpenBacklog:          256,
		MaxStreamWindow:      1 << 20,
		SessionReceiveBudget: 64 << 20,
		WriteTimeout:         10 * time.Second,
		MaxFrame:             64 << 10,
		PingLimit:            FloodLimit{Rate: 100, Burst: 100},
		StreamLimit:          FloodLimit{Rate: 1000, Burst: 1000},
		EmptyFrameLimit:      FloodLimit{Rate: 2000, Burst: 4000},
	}
}

// Validate reports the first setting that is out of range.
func (c *Config) Validate() error {
	switch {
	case c.AcceptBacklog < 1:
		return errors.New("mux: config: AcceptBacklog must be at least 1")
	case c.OpenBacklog < 1:
		return errors.New("mux: config: OpenBacklog must be at least 1")
	case c.MaxStreamWindow < initialWindow || c.MaxStreamWindow > 1<<30:
		return fmt.Errorf("mux: config: MaxStreamWindow %d is outside [256 KiB, 1 GiB]", c.MaxStreamWindow)
	case c.SessionReceiveBudget < 0:
		return errors.New("mux: config: SessionReceiveBudget must not be negative")
	case c.WriteTimeout <= 0:
		return errors.New("mux: config: WriteTimeout must be positive")
	case c.MaxFrame < 1<<10 || c.MaxFrame > 16<<20:
		return fmt.Errorf("mux: config: MaxFrame %d is outside [1 KiB, 16 MiB]", c.MaxFrame)
	}
	limits := []struct {
		name string
		l    FloodLimit
	}{{"PingLimit", c.PingLimit}, {"StreamLimit", c.StreamLimit}, {"EmptyFrameLimit", c.EmptyFrameLimit}}
	for _, x := range limits {
		if !(x.l.Rate > 0) || x.l.Burst < 1 {
			return fmt.Errorf("mux: config: %s needs Rate > 0 and Burst >= 1", x.name)
		}
	}
	return nil
}
