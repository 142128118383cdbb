package main

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// Issue 3's targets for round trips and dials.
const (
	goalRTT      = 4.0 // tunnel/direct 64-byte round trip, p50 and p99
	goalDialRate = 0.4 // tunnel/direct new tunnels a second
)

// runLatency measures 64-byte round trips on one connection per path.
func (b *bench) runLatency(ctx context.Context) error {
	rs, err := b.rttRuns(ctx, testLatency)
	if err != nil {
		return err
	}
	b.addRTT(testLatency, "64 B round trip", rs[pathDirect], rs[pathProbe], rs[pathTunnel], goalRTT)
	return nil
}

// rttRuns measures round trips on every path, --repeat times, the paths
// alternating, and returns them by path name.
func (b *bench) rttRuns(ctx context.Context, test string) (map[string][]percentiles, error) {
	rs := make(map[string][]percentiles)
	for r := range b.cfg.repeat {
		for _, p := range b.env.paths() {
			pc, err := b.rtts(ctx, p.d)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
			rs[p.name] = append(rs[p.name], pc)
		}
		b.say("%s run %d/%d: %s", test, r+1, b.cfg.repeat, rttLine(rs))
	}
	return rs, nil
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

// addRTT adds the p50, p90 and p99 figures of round trips, beside the
// baseline and the probe (nil when it did not run); p50 and p99 carry the
// bound maxRatio on their ratio to the baseline, unless it is 0.
func (b *bench) addRTT(test, what string, base, probe, tunnel []percentiles, maxRatio float64) {
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
		if q.bounds && maxRatio > 0 {
			g = atMostRatio(maxRatio)
		}
		f := newFigure(test, what+" "+q.name, unitMicros, pick(base, q.get), pick(tunnel, q.get), g).withProbe(pick(probe, q.get))
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

// rttLine formats the latest round-trip figures of each path for a
// progress line.
func rttLine(rs map[string][]percentiles) string {
	var parts []string
	for _, name := range []string{pathDirect, pathProbe, pathTunnel} {
		if ps := rs[name]; len(ps) > 0 {
			p := ps[len(ps)-1]
			parts = append(parts, fmt.Sprintf("%s p50 %.1f µs p99 %.1f µs", name, micros(p.P50), micros(p.P99)))
		}
	}
	return strings.Join(parts, ", ")
}

// runDialRate measures whole short tunnels a second: CONNECT (or a TCP
// dial), one 64-byte echo, close, from concurrent dialers.
func (b *bench) runDialRate(ctx context.Context) error {
	rs := runs{}
	for r := range b.cfg.repeat {
		for _, p := range b.env.paths() {
			rate, _, err := measureDialRate(ctx, p.d, b.cfg.concurrency, b.cfg.duration)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			rs[p.name] = append(rs[p.name], rate)
		}
		b.say("dialrate run %d/%d: %s", r+1, b.cfg.repeat, rs.line(unitPerSecond))
	}
	cas := fmt.Sprintf("dial + 64 B echo + close, %d dialers", b.cfg.concurrency)
	b.add(rs.figure(testDialRate, cas, unitPerSecond, atLeastRatio(goalDialRate)))
	return nil
}
