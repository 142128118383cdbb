package mux

import (
	"sync/atomic"
	"time"
)

// bucket is a token bucket for one class of peer frames (FloodLimit). Only
// the read loop touches it, so it needs no lock.
type bucket struct {
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(l FloodLimit) bucket {
	return bucket{rate: l.Rate, burst: float64(l.Burst), tokens: float64(l.Burst)}
}

// allow takes a token, reporting false when the class is over its limit.
func (b *bucket) allow(now time.Time) bool {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// floodGuard holds the session's three flood limits (Config.PingLimit,
// StreamLimit, EmptyFrameLimit).
type floodGuard struct {
	ping, stream, empty bucket
}

func newFloodGuard(c *Config) floodGuard {
	return floodGuard{
		ping:   newBucket(c.PingLimit),
		stream: newBucket(c.StreamLimit),
		empty:  newBucket(c.EmptyFrameLimit),
	}
}

// check charges one frame to b and returns a ProtocolError of the given
// kind when the class is over its limit.
func (g *floodGuard) check(b *bucket, kind string) error {
	if b.allow(time.Now()) {
		return nil
	}
	return violation(kind, "more than %.0f per second (burst %.0f)", b.rate, b.burst)
}

// budget is Config.SessionReceiveBudget: window credit granted beyond each
// stream's initial 256 KiB. Streams take from it when their window grows and
// give back when they leave the session's table.
type budget struct {
	limit int64
	used  atomic.Int64
}

// take reserves n bytes, reporting false (and reserving nothing) if that
// would exceed the limit.
func (b *budget) take(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// give returns n bytes taken earlier.
func (b *budget) give(n int64) { b.used.Add(-n) }
