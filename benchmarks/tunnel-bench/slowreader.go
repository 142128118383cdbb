package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// goalSlowReader is the bound on how much one unread tunnel may
// raise the round trips of the others on the same agent.
const goalSlowReader = 2.0

// Slow-reader settings: how long the unread tunnel gets to fill its
// window, how many new tunnels must open while it is stalled, and how
// long each may take.
const (
	stallFill     = 500 * time.Millisecond
	stallDials    = 20
	stallDialWait = 5 * time.Second
	// stallCheck is how much of the stalled stream is read and verified
	// afterwards: it must resume intact.
	stallCheck = 4 << 20
)

const baselineNoStall = "same path, no stalled tunnel"

// runSlowReader measures round trips on one tunnel, then again while
// another tunnel through the same agent has a source nobody reads, and
// checks that new tunnels still open meanwhile.
func (b *bench) runSlowReader(ctx context.Context) error {
	echo, err := openEcho(ctx, b.env.tunnel, 1)
	if err != nil {
		return err
	}
	defer echo.Close()
	var before, during []percentiles
	var dialsBefore, dialsDuring []float64
	for r := range b.cfg.repeat {
		pb, db, pd, dd, err := b.stallOnce(ctx, echo)
		if err != nil {
			return err
		}
		before, during = append(before, pb), append(during, pd)
		dialsBefore, dialsDuring = append(dialsBefore, db), append(dialsDuring, dd)
		b.say("slowreader run %d/%d: without a stalled tunnel p50 %.1f µs p99 %.1f µs; with one p50 %.1f µs p99 %.1f µs; %d new tunnels opened while stalled",
			r+1, b.cfg.repeat, micros(pb.P50), micros(pb.P99), micros(pd.P50), micros(pd.P99), stallDials)
	}
	n := len(b.figs)
	b.addRTT(testSlowReader, "64 B round trip beside a stalled tunnel", before, nil, during, goalSlowReader)
	f := newFigure(testSlowReader, fmt.Sprintf("new tunnel + echo beside a stalled tunnel (%d)", stallDials), unitMillis, dialsBefore, dialsDuring, nil)
	b.add(f)
	for i := n; i < len(b.figs); i++ {
		b.figs[i].Baseline = baselineNoStall
	}
	return nil
}

// stallOnce measures round trips and new tunnels before and while a
// stalled tunnel exists, then checks the stalled stream resumes intact.
func (b *bench) stallOnce(ctx context.Context, echo net.Conn) (rttBefore percentiles, dialBefore float64, rttDuring percentiles, dialDuring float64, err error) {
	if rttBefore, err = rttsOn(echo, b.cfg); err != nil {
		return
	}
	if dialBefore, err = b.newTunnels(ctx, "before stalling"); err != nil {
		return
	}
	seed := b.cfg.seed + 1
	stalled, err := benchmarks.Open(ctx, b.env.tunnel, benchmarks.Header{Mode: benchmarks.ModeSource, Seed: seed, Length: benchmarks.Unlimited}, nil)
	if err != nil {
		err = fmt.Errorf("opening the tunnel to stall: %w", err)
		return
	}
	defer stalled.Close()
	time.Sleep(stallFill)
	if rttDuring, err = rttsOn(echo, b.cfg); err != nil {
		err = fmt.Errorf("round trips beside the stalled tunnel: %w", err)
		return
	}
	if dialDuring, err = b.newTunnels(ctx, "while a tunnel is stalled"); err != nil {
		return
	}
	err = resumes(stalled, benchmarks.NewPattern(seed))
	return
}

// newTunnels opens stallDials tunnels one after another, each checked with
// an echo and closed, and returns the median time of one in ms.
func (b *bench) newTunnels(ctx context.Context, when string) (float64, error) {
	var ms []float64
	for i := range stallDials {
		ctx, cancel := context.WithTimeout(ctx, stallDialWait)
		start := time.Now()
		c, err := openEcho(ctx, b.env.tunnel, uint64(i)+100)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("new tunnel %d %s failed: %w", i+1, when, err)
		}
		ms = append(ms, float64(time.Since(start))/float64(time.Millisecond))
		c.Close()
	}
	return median(ms), nil
}

// resumes reads the start of the stalled stream and verifies it.
func resumes(c net.Conn, p *benchmarks.Pattern) error {
	c.SetReadDeadline(time.Now().Add(benchmarks.IOGrace))
	v := benchmarks.NewVerifier(p)
	buf := make([]byte, benchmarks.ChunkSize)
	for v.Count() < stallCheck {
		n, err := c.Read(buf)
		if cerr := v.Check(buf[:n]); cerr != nil {
			return fmt.Errorf("the stalled tunnel's data: %w", cerr)
		}
		if err != nil {
			return fmt.Errorf("the stalled tunnel did not resume after %d bytes: %w", v.Count(), err)
		}
	}
	return nil
}
