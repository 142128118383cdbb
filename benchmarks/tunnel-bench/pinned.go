package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// The pinned test repeats the latency test with every process of the run
// on one CPU: this tool (the client), the target, the tunnel-server and
// tunnel-agent, and the probe's two relays. A round trip then cannot run
// its hops in parallel, and wakes that cross CPUs (one goroutine handing a
// frame to another on another thread) cost a context switch instead.
//
// A Go runtime (1.25 and later) notices its new affinity within a second
// and drops GOMAXPROCS to 1, as if it had been started under taskset; the
// progress line shows what each process runs with.

// maxPinCPU bounds --pin-cpu: the masks hold 1024 CPUs, as glibc's do.
const maxPinCPU = 1024

// pinSettle is how long the processes get, once pinned, to notice their
// new affinity before the first round trip.
const pinSettle = 1500 * time.Millisecond

// errPinUnsupported is pinAll's answer where sched_setaffinity is missing.
var errPinUnsupported = errors.New("pinning needs Linux (sched_setaffinity)")

// runPinned measures 64-byte round trips on every path with all processes
// moved to --pin-cpu, then gives them their CPUs back.
func (b *bench) runPinned(ctx context.Context) (err error) {
	cpu := b.cfg.pinCPU
	ps := append([]proc{{name: "client", pid: os.Getpid()}}, b.env.allProcs()...)
	pin, err := pinAll(ps, cpu)
	if errors.Is(err, errPinUnsupported) {
		b.say("pinned: skipped: %v", err)
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, pin.undo()) }()
	b.say("pinned: %s on CPU %d", procNames(ps), cpu)
	time.Sleep(pinSettle)
	rs, err := b.rttRuns(ctx, testPinned)
	if err != nil {
		return err
	}
	procs := b.gomaxprocs(ctx)
	b.say("pinned: GOMAXPROCS now %s", procs)
	b.addRTT(testPinned, fmt.Sprintf("64 B round trip, all on CPU %d,", cpu), rs[pathDirect], rs[pathProbe], rs[pathTunnel], 0)
	return nil
}

// gomaxprocs reports what GOMAXPROCS each process with a /metrics runs
// with, and this one, for the progress line.
func (b *bench) gomaxprocs(ctx context.Context) string {
	parts := []string{fmt.Sprintf("client %d", runtime.GOMAXPROCS(0))}
	add := func(prefix string, ps []proc) {
		for _, p := range ps {
			if p.metrics == "" {
				continue
			}
			v, err := scrape(ctx, p.metrics, metricGOMAXPROCS)
			if err != nil {
				parts = append(parts, fmt.Sprintf("%s%s ? (%v)", prefix, p.name, err))
				continue
			}
			parts = append(parts, fmt.Sprintf("%s%s %.0f", prefix, p.name, v))
		}
	}
	add("", b.env.procs())
	add("probe ", b.env.probeProcs())
	return strings.Join(parts, ", ")
}

func procNames(ps []proc) string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = fmt.Sprintf("%s (pid %d)", p.name, p.pid)
	}
	return strings.Join(names, ", ")
}
