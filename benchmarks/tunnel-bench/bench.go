package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// bench runs the selected tests against an env and collects the figures.
type bench struct {
	cfg   *config
	env   *env
	figs  []figure
	start time.Time
	out   io.Writer // progress lines
}

// say writes one progress line to stderr, with the time since the start.
func (b *bench) say(format string, args ...any) {
	fmt.Fprintf(b.out, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) add(f figure) { b.figs = append(b.figs, f) }

// runTests runs every selected test in turn; the first failure ends the
// run with an error naming the test and its cause.
func (b *bench) runTests(ctx context.Context) error {
	tests := map[string]func(context.Context) error{
		testThroughput: b.runThroughput,
		testLatency:    b.runLatency,
		testPinned:     b.runPinned,
		testDialRate:   b.runDialRate,
		testIdle:       b.runIdle,
		testSlowReader: b.runSlowReader,
		testFleet:      b.runFleet,
	}
	for _, name := range allTests {
		if !contains(b.cfg.tests, name) {
			continue
		}
		b.say("%s: starting", name)
		if err := tests[name](ctx); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: interrupted (%w)", name, context.Cause(ctx))
			}
			return b.env.explain(name, err)
		}
		if b.env.local != nil {
			if err := b.env.local.alive(); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// preflight opens one tunnel, one direct connection and one through the
// probe and checks an echo on each, so that an unreachable frontend,
// target or agent is reported before any test, with what was tried.
func (b *bench) preflight(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, preflightTimeout)
	defer cancel()
	if b.env.direct != nil {
		c, err := openEcho(ctx, b.env.direct, 0)
		if err != nil {
			return fmt.Errorf("the target %s does not answer directly (--direct=false skips the baseline): %w", b.env.target, err)
		}
		c.Close()
	}
	if b.env.probe != nil {
		c, err := openEcho(ctx, b.env.probe, 0)
		if err != nil {
			return fmt.Errorf("no tunnel through the probe to %s: %w", b.env.dest, err)
		}
		c.Close()
	}
	c, err := openEcho(ctx, b.env.tunnel, 0)
	if err != nil {
		return fmt.Errorf("no tunnel through %s to %s: %w", b.env.frontend(), b.env.dest, err)
	}
	return c.Close()
}

// preflightTimeout bounds the preflight's dials and echoes.
const preflightTimeout = 15 * time.Second
