package main

import (
	"context"
	"fmt"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// Issue 3's targets for the throughput test.
const (
	goalThroughput = 0.30 // tunnel/direct MB/s, each direction, 1 and N streams
	goalCPUPerGB   = 2.5  // server + agent CPU seconds per GB through the tunnel
)

// throughputCase is one direction and stream count.
type throughputCase struct {
	upload  bool
	streams int
}

func (tc throughputCase) String() string {
	dir := "download"
	if tc.upload {
		dir = "upload"
	}
	s := "s"
	if tc.streams == 1 {
		s = ""
	}
	return fmt.Sprintf("%s, %d stream%s", dir, tc.streams, s)
}

// runThroughput measures each case on both paths, alternating them, and
// the server's and agent's CPU over the tunnel runs.
func (b *bench) runThroughput(ctx context.Context) error {
	cases := []throughputCase{{true, 1}, {false, 1}, {true, b.cfg.streams}, {false, b.cfg.streams}}
	pat := benchmarks.NewPattern(b.cfg.seed)
	var cpu, bytes float64
	for _, tc := range cases {
		var direct, tunnel []float64
		for r := range b.cfg.repeat {
			if b.env.direct != nil {
				t, err := b.transfer(ctx, b.env.direct, pat, tc)
				if err != nil {
					return fmt.Errorf("%s, direct: %w", tc, err)
				}
				direct = append(direct, t.mbps())
			}
			c0, err := b.env.cpu()
			if err != nil {
				return err
			}
			t, err := b.transfer(ctx, b.env.tunnel, pat, tc)
			if err != nil {
				return fmt.Errorf("%s, tunnel: %w", tc, err)
			}
			c1, err := b.env.cpu()
			if err != nil {
				return err
			}
			cpu, bytes = cpu+c1-c0, bytes+float64(t.bytes)
			tunnel = append(tunnel, t.mbps())
			b.say("throughput %s, run %d/%d: %s", tc, r+1, b.cfg.repeat, pair(direct, tunnel, unitMBps))
		}
		b.add(newFigure(testThroughput, tc.String(), unitMBps, direct, tunnel, atLeastRatio(goalThroughput)))
	}
	if b.env.measurable() {
		f := newFigure(testThroughput, "CPU per GB, server + agent", unitCPUPerGB, nil, []float64{cpu / (bytes / 1e9)}, atMost(goalCPUPerGB))
		f.Extra = map[string]float64{"cpuSeconds": cpu, "bytes": bytes}
		b.add(f)
	} else {
		b.say("throughput: no CPU per GB figure without --server-pid and --agent-pid")
	}
	return nil
}

func (b *bench) transfer(ctx context.Context, d benchmarks.Dialer, pat *benchmarks.Pattern, tc throughputCase) (transfer, error) {
	if tc.upload {
		return measureUpload(ctx, d, pat, b.cfg.seed, tc.streams, b.cfg.duration)
	}
	return measureDownload(ctx, d, pat, b.cfg.seed, tc.streams, b.cfg.duration)
}

// pair formats the latest figures of a run for a progress line.
func pair(direct, tunnel []float64, unit string) string {
	s := "tunnel " + formatValue(tunnel[len(tunnel)-1], unit)
	if len(direct) > 0 {
		d := direct[len(direct)-1]
		s = fmt.Sprintf("direct %s, %s (%.2f×)", formatValue(d, unit), s, tunnel[len(tunnel)-1]/d)
	}
	return s
}
