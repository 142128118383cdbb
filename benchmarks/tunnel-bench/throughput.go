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

// runThroughput measures each case on every path, alternating them, and
// the CPU the relays of the probe and of the tunnel use over their runs.
func (b *bench) runThroughput(ctx context.Context) error {
	cases := []throughputCase{{true, 1}, {false, 1}, {true, b.cfg.streams}, {false, b.cfg.streams}}
	pat := benchmarks.NewPattern(b.cfg.seed)
	cpu, bytes := map[string]float64{}, map[string]float64{}
	for _, tc := range cases {
		rs, perGB := runs{}, runs{} // perGB: each run's CPU per GB, for the progress line
		for r := range b.cfg.repeat {
			for _, p := range b.env.paths() {
				t, sec, err := b.transferOn(ctx, p, pat, tc)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", tc, p.name, err)
				}
				rs[p.name] = append(rs[p.name], t.mbps())
				cpu[p.name], bytes[p.name] = cpu[p.name]+sec, bytes[p.name]+float64(t.bytes)
				if len(p.procs) > 0 && t.bytes > 0 {
					perGB[p.name] = append(perGB[p.name], sec/(float64(t.bytes)/1e9))
				}
			}
			b.say("throughput %s, run %d/%d: %s", tc, r+1, b.cfg.repeat, rs.line(unitMBps))
			if len(perGB[pathTunnel]) > 0 {
				b.say("throughput %s, run %d/%d, CPU per GB: %s", tc, r+1, b.cfg.repeat, perGB.line(unitCPUPerGB))
			}
		}
		b.add(rs.figure(testThroughput, tc.String(), unitMBps, atLeastRatio(goalThroughput)))
	}
	if !b.env.measurable() {
		b.say("throughput: no CPU per GB figure without --server-pid and --agent-pid")
		return nil
	}
	perGB := func(name string) []float64 {
		if bytes[name] == 0 {
			return nil
		}
		return []float64{cpu[name] / (bytes[name] / 1e9)}
	}
	f := newFigure(testThroughput, "CPU per GB, server + agent", unitCPUPerGB, nil, perGB(pathTunnel), atMost(goalCPUPerGB)).withProbe(perGB(pathProbe))
	f.Extra = map[string]float64{"cpuSeconds": cpu[pathTunnel], "bytes": bytes[pathTunnel]}
	if f.Probe > 0 {
		f.Extra["probeCPUSeconds"], f.Extra["probeBytes"] = cpu[pathProbe], bytes[pathProbe]
	}
	b.add(f)
	return nil
}

// transferOn runs one throughput case on p and returns it with the CPU
// seconds p's relays used meanwhile.
func (b *bench) transferOn(ctx context.Context, p path, pat *benchmarks.Pattern, tc throughputCase) (transfer, float64, error) {
	c0, err := cpuOf(p.procs)
	if err != nil {
		return transfer{}, 0, err
	}
	t, err := b.transfer(ctx, p.d, pat, tc)
	if err != nil {
		return t, 0, err
	}
	c1, err := cpuOf(p.procs)
	return t, c1 - c0, err
}

func (b *bench) transfer(ctx context.Context, d benchmarks.Dialer, pat *benchmarks.Pattern, tc throughputCase) (transfer, error) {
	if tc.upload {
		return measureUpload(ctx, d, pat, b.cfg.seed, tc.streams, b.cfg.duration)
	}
	return measureDownload(ctx, d, pat, b.cfg.seed, tc.streams, b.cfg.duration)
}
