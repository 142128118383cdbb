package main

import (
	"context"
	"fmt"
	"net"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// Issue 3's targets for round trips and dials.
const (
	goalRTT      = 4.0 // tunnel/direct 64-byte round trip, p50 and p99
	goalDialRate = 0.4 // tunnel/direct new tunnels a second
)

// runLatency measures 64-byte round trips on one connection per path.
func (b *bench) runLatency(ctx context.Context) error {
	var direct, tunnel []percentiles
	for r := range b.cfg.repeat {
		if b.env.direct != nil {
			p, err := b.rtts(ctx, b.env.direct)
			if err != nil {
				return fmt.Errorf("direct: %w", err)
			}
			direct = append(direct, p)
		}
		p, err := b.rtts(ctx, b.env.tunnel)
		if err != nil {
			return fmt.Errorf("tunnel: %w", err)
		}
		tunnel = append(tunnel, p)
		b.say("latency run %d/%d: %s", r+1, b.cfg.repeat, rttLine(direct, tunnel))
	}
	b.addRTT(testLatency, "64 B round trip", direct, tunnel, goalRTT)
	return nil
}

// rtts opens an echo connection on d and measures round trips on it.
func (b *bench) rtts(ctx context.Context, d benchmarks.Dialer) (percentiles, error) {
	c, err := openEcho(ctx, d, 0)
	if err != nil {
		return percentiles{}, err
	}
	defer c.Close()
	return rttsOn(c, b.cfg)
}

func rttsOn(c net.Conn, cfg *config) (percentiles, error) {
	var seq uint64
	s, err := measureRTT(c, &seq, cfg.duration)
	if err != nil {
		return percentiles{}, err
	}
	return percentilesOf(s), nil
}

// addRTT adds the p50, p90 and p99 figures of round trips; p50 and p99
// carry the bound maxRatio on their ratio to the baseline.
func (b *bench) addRTT(test, what string, base, tunnel []percentiles, maxRatio float64) {
	for _, q := range []struct {
		name   string
		get    func(percentiles) float64
		bounds bool
	}{
		{"p50", func(p percentiles) float64 { return micros(p.P50) }, true},
		{"p90", func(p percentiles) float64 { return micros(p.P90) }, false},
		{"p99", func(p percentiles) float64 { return micros(p.P99) }, true},
	} {
		var g *goal
		if q.bounds {
			g = atMostRatio(maxRatio)
		}
		f := newFigure(test, what+" "+q.name, unitMicros, pick(base, q.get), pick(tunnel, q.get), g)
		f.Extra = map[string]float64{"roundTrips": float64(count(tunnel))}
		b.add(f)
	}
}

func pick(ps []percentiles, get func(percentiles) float64) []float64 {
	var xs []float64
	for _, p := range ps {
		xs = append(xs, get(p))
	}
	return xs
}

func count(ps []percentiles) int {
	n := 0
	for _, p := range ps {
		n += p.N
	}
	return n
}

// rttLine formats the latest round-trip figures for a progress line.
func rttLine(base, tunnel []percentiles) string {
	t := tunnel[len(tunnel)-1]
	s := fmt.Sprintf("tunnel p50 %.1f µs p99 %.1f µs", micros(t.P50), micros(t.P99))
	if len(base) > 0 {
		d := base[len(base)-1]
		s = fmt.Sprintf("direct p50 %.1f µs p99 %.1f µs, %s", micros(d.P50), micros(d.P99), s)
	}
	return s
}

// runDialRate measures whole short tunnels a second: CONNECT (or a TCP
// dial), one 64-byte echo, close, from concurrent dialers.
func (b *bench) runDialRate(ctx context.Context) error {
	var direct, tunnel []float64
	for r := range b.cfg.repeat {
		if b.env.direct != nil {
			rate, _, err := measureDialRate(ctx, b.env.direct, b.cfg.concurrency, b.cfg.duration)
			if err != nil {
				return fmt.Errorf("direct: %w", err)
			}
			direct = append(direct, rate)
		}
		rate, _, err := measureDialRate(ctx, b.env.tunnel, b.cfg.concurrency, b.cfg.duration)
		if err != nil {
			return fmt.Errorf("tunnel: %w", err)
		}
		tunnel = append(tunnel, rate)
		b.say("dialrate run %d/%d: %s", r+1, b.cfg.repeat, pair(direct, tunnel, unitPerSecond))
	}
	cas := fmt.Sprintf("dial + 64 B echo + close, %d dialers", b.cfg.concurrency)
	b.add(newFigure(testDialRate, cas, unitPerSecond, direct, tunnel, atLeastRatio(goalDialRate)))
	return nil
}
