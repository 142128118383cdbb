package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// goalIdleKiB is the bound on resident memory per idle tunnel,
// server and agent together.
const goalIdleKiB = 32

// idleWorkers open and check the idle tunnels concurrently.
const idleWorkers = 32

// idleSettle is the pause between opening the last tunnel and reading
// memory, so that work still in flight from opening has finished.
const idleSettle = time.Second

// fdSpare is descriptors a process needs beyond one per tunnel.
const fdSpare = 256

// idleRun is what one path's idle measurement found.
type idleRun struct {
	n       int
	opening time.Duration
	// rss and goroutines are per process, by name, before the tunnels
	// opened ([0]) and once they all were open ([1]).
	rss, goroutines [2]map[string]float64
}

// perTunnel returns the growth of m over the open tunnels, summed over
// the processes, or each one's alone with only.
func (r idleRun) perTunnel(m [2]map[string]float64, only string) []float64 {
	var delta float64
	found := false
	for name, v := range m[1] {
		if only == "" || name == only {
			delta += v - m[0][name]
			found = true
		}
	}
	if !found {
		return nil
	}
	return []float64{delta / float64(r.n)}
}

// runIdle opens --idle tunnels, holds them all at once, reads the memory
// and goroutines they cost, and checks every one still echoes; then the
// same through the probe.
func (b *bench) runIdle(ctx context.Context) error {
	if err := b.checkNoFile(); err != nil {
		return err
	}
	tun, err := b.idleOn(ctx, pathTunnel, b.env.tunnel, b.env.procs, b.env.fresh, b.cfg.idle)
	if err != nil {
		return err
	}
	var probe *idleRun
	if b.env.probe != nil {
		n, err := b.probeIdleCount()
		if err != nil {
			return err
		}
		p, err := b.idleOn(ctx, pathProbe, b.env.probe, b.env.probeProcs, b.env.freshProbe, n)
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		probe = &p
	}
	b.addIdle(tun, probe)
	return nil
}

// idleOn restarts the path's processes, opens n tunnels on d and reads
// what they cost the processes procs returns.
func (b *bench) idleOn(ctx context.Context, name string, d benchmarks.Dialer, procs func() []proc, fresh func(context.Context, func(string, ...any)) error, n int) (r idleRun, err error) {
	if err := fresh(ctx, b.say); err != nil {
		return r, err
	}
	r.n = n
	if r.rss[0], r.goroutines[0], err = b.idleState(ctx, procs()); err != nil {
		return r, err
	}
	conns := make([]net.Conn, n)
	defer closeAll(conns)
	start := time.Now()
	if err := b.openIdle(ctx, name, d, conns); err != nil {
		return r, err
	}
	r.opening = time.Since(start)
	time.Sleep(idleSettle)
	if r.rss[1], r.goroutines[1], err = b.idleState(ctx, procs()); err != nil {
		return r, err
	}
	if err := b.echoAll(conns); err != nil {
		return r, err
	}
	b.say("idle (%s): all %d tunnels open at once echoed again, every byte as sent", name, n)
	return r, nil
}

// idleState reads the resident memory and goroutines of ps.
func (b *bench) idleState(ctx context.Context, ps []proc) (map[string]float64, map[string]float64, error) {
	rss, err := rssOf(ps)
	if err != nil {
		return nil, nil, err
	}
	g, err := goroutinesOf(ctx, ps)
	return rss, g, err
}

// openIdle opens an echo tunnel on d into every slot of conns, each
// checked with one echo of its own message, and reports progress by
// tenths.
func (b *bench) openIdle(ctx context.Context, name string, d benchmarks.Dialer, conns []net.Conn) error {
	n := len(conns)
	step := n // small counts: one line at the end
	if n >= 1000 {
		step = n / 10
	}
	var opened atomic.Int64
	return forEach(n, idleWorkers, func(i int) error {
		c, err := openEcho(ctx, d, uint64(i))
		if err != nil {
			return fmt.Errorf("opening tunnel %d of %d (%d open): %w", i+1, n, opened.Load(), err)
		}
		conns[i] = c
		if k := opened.Add(1); k%int64(step) == 0 || k == int64(n) {
			b.say("idle (%s): %d/%d tunnels open", name, k, n)
		}
		return nil
	})
}

// echoAll checks that every held tunnel still echoes its own message.
func (b *bench) echoAll(conns []net.Conn) error {
	return forEach(len(conns), idleWorkers, func(i int) error {
		msg := echoMsg(uint64(i) | 1<<40)
		if err := benchmarks.Echo(conns[i], msg, make([]byte, msgLen), benchmarks.IOGrace); err != nil {
			return fmt.Errorf("tunnel %d of %d no longer echoes: %w", i+1, len(conns), err)
		}
		return nil
	})
}

// addIdle adds the memory per tunnel and the goroutines per tunnel on
// each side, beside the probe's where it ran.
func (b *bench) addIdle(tun idleRun, probe *idleRun) {
	cas := fmt.Sprintf("%d tunnels held, all echoing", tun.n)
	if probe != nil && probe.n != tun.n {
		cas = fmt.Sprintf("%d tunnels held (probe %d), all echoing", tun.n, probe.n)
	}
	extra := map[string]float64{"tunnels": float64(tun.n), "openSeconds": tun.opening.Seconds()}
	if !b.env.measurable() {
		f := newFigure(testIdle, cas, "tunnels/s opened", nil, []float64{float64(tun.n) / tun.opening.Seconds()}, nil)
		f.Extra = extra
		b.add(f)
		return
	}
	for name, kib := range tun.rss[1] {
		extra[name+"RSSBeforeKiB"], extra[name+"RSSAfterKiB"] = tun.rss[0][name], kib
	}
	var probeKiB []float64
	if probe != nil {
		probeKiB = probe.perTunnel(probe.rss, "")
		extra["probeTunnels"], extra["probeOpenSeconds"] = float64(probe.n), probe.opening.Seconds()
		for name, kib := range probe.rss[1] {
			extra["probe_"+name+"RSSBeforeKiB"], extra["probe_"+name+"RSSAfterKiB"] = probe.rss[0][name], kib
		}
	}
	f := newFigure(testIdle, cas+", RSS server + agent", unitKiB, nil, tun.perTunnel(tun.rss, ""), atMost(goalIdleKiB)).withProbe(probeKiB)
	f.Extra = extra
	b.add(f)
	b.addGoroutines(fmt.Sprintf("%d tunnels held", tun.n), tun, probe)
}

// addGoroutines adds the goroutines per open tunnel of the server and of
// the agent, where their /metrics could be read.
func (b *bench) addGoroutines(cas string, tun idleRun, probe *idleRun) {
	for _, side := range []string{"server", "agent"} {
		t := tun.perTunnel(tun.goroutines, side)
		if t == nil {
			b.say("idle: no goroutine figure of the %s without its /metrics (known in --local mode)", side)
			continue
		}
		var p []float64
		if probe != nil {
			p = probe.perTunnel(probe.goroutines, side)
		}
		f := newFigure(testIdle, cas+", goroutines of the "+side, unitGoroutine, nil, t, nil).withProbe(p)
		f.Extra = map[string]float64{"before": tun.goroutines[0][side], "after": tun.goroutines[1][side]}
		if probe != nil {
			f.Extra["probeBefore"], f.Extra["probeAfter"] = probe.goroutines[0][side], probe.goroutines[1][side]
		}
		b.add(f)
	}
}

// probeIdleCount is how many idle tunnels the probe can hold: --idle, or
// fewer where its processes' open-file limit is lower than the two
// descriptors a tunnel costs each of them (the client connection and the
// TLS one; the TLS one and the target's).
func (b *bench) probeIdleCount() (int, error) {
	lowest := uint64(1 << 62)
	for _, p := range b.env.probeProcs() {
		have, err := noFileLimit(p.pid)
		if err != nil {
			return 0, err
		}
		lowest = min(lowest, have)
	}
	n := min(b.cfg.idle, int((lowest-min(lowest, fdSpare))/2))
	if n < 1 {
		return 0, fmt.Errorf("the probe's processes may open only %d files, too few for one idle tunnel", lowest)
	}
	if n < b.cfg.idle {
		b.say("idle (probe): %d tunnels, not %d: the probe's processes may open %d files, two per tunnel", n, b.cfg.idle, lowest)
	}
	return n, nil
}

// checkNoFile fails early, naming the limit, when a process could not
// hold one descriptor per idle tunnel.
func (b *bench) checkNoFile() error {
	need := uint64(b.cfg.idle + fdSpare)
	self := need
	if b.env.own != nil {
		self += uint64(b.cfg.idle) // this process is the target too
	}
	if have := raiseNoFile(); have < self {
		return usageError{fmt.Errorf("--idle %d needs %d open files in this process but the limit is %d (raise the hard limit, e.g. ulimit -Hn, or lower --idle)", b.cfg.idle, self, have)}
	}
	ps := b.env.procs()
	if b.env.local != nil {
		ps = append(ps, proc{name: "target", pid: b.env.local.target.pid()})
	}
	for _, p := range ps {
		have, err := noFileLimit(p.pid)
		if err != nil {
			return err
		}
		if have < need {
			return fmt.Errorf("the %s (pid %d) may open only %d files, fewer than --idle %d needs (%d)", p.name, p.pid, have, b.cfg.idle, need)
		}
	}
	return nil
}

// noFileLimit reads the soft open-file limit of pid.
func noFileLimit(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the open-file limit of pid %d: %w", pid, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				if f[0] == "unlimited" {
					return 1 << 62, nil
				}
				return strconv.ParseUint(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("pid %d: no open-file limit in /proc/%d/limits", pid, pid)
}
