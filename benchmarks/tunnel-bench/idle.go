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

// goalIdleKiB is issue 3's bound on resident memory per idle tunnel,
// server and agent together.
const goalIdleKiB = 32

// idleWorkers open and check the idle tunnels concurrently.
const idleWorkers = 32

// idleSettle is the pause between opening the last tunnel and reading
// memory, so that work still in flight from opening has finished.
const idleSettle = time.Second

// fdSpare is descriptors a process needs beyond one per tunnel.
const fdSpare = 256

// runIdle opens --idle tunnels, holds them all at once, reads the memory
// they cost, and checks every one still echoes.
func (b *bench) runIdle(ctx context.Context) error {
	if err := b.env.fresh(ctx, b.say); err != nil {
		return err
	}
	if err := b.checkNoFile(); err != nil {
		return err
	}
	before, err := b.env.rss()
	if err != nil {
		return err
	}
	n := b.cfg.idle
	conns := make([]net.Conn, n)
	defer closeAll(conns)
	start := time.Now()
	if err := b.openIdle(ctx, conns); err != nil {
		return err
	}
	opening := time.Since(start)
	time.Sleep(idleSettle)
	after, err := b.env.rss()
	if err != nil {
		return err
	}
	if err := b.echoAll(conns); err != nil {
		return err
	}
	b.say("idle: all %d tunnels open at once echoed again, every byte as sent", n)
	b.add(idleFigure(n, before, after, opening, b.env.measurable()))
	return nil
}

// openIdle opens an echo tunnel into every slot of conns, each checked
// with one echo of its own message, and reports progress by tenths.
func (b *bench) openIdle(ctx context.Context, conns []net.Conn) error {
	n := len(conns)
	step := n // small counts: one line at the end
	if n >= 1000 {
		step = n / 10
	}
	var opened atomic.Int64
	return forEach(n, idleWorkers, func(i int) error {
		c, err := openEcho(ctx, b.env.tunnel, uint64(i))
		if err != nil {
			return fmt.Errorf("opening tunnel %d of %d (%d open): %w", i+1, n, opened.Load(), err)
		}
		conns[i] = c
		if k := opened.Add(1); k%int64(step) == 0 || k == int64(n) {
			b.say("idle: %d/%d tunnels open", k, n)
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

func idleFigure(n int, before, after map[string]float64, opening time.Duration, measurable bool) figure {
	cas := fmt.Sprintf("%d tunnels held, all echoing", n)
	extra := map[string]float64{"tunnels": float64(n), "openSeconds": opening.Seconds()}
	if !measurable {
		f := newFigure(testIdle, cas, "tunnels/s opened", nil, []float64{float64(n) / opening.Seconds()}, nil)
		f.Extra = extra
		return f
	}
	var delta float64
	for name, kib := range after {
		delta += kib - before[name]
		extra[name+"RSSBeforeKiB"], extra[name+"RSSAfterKiB"] = before[name], kib
	}
	f := newFigure(testIdle, cas+", RSS server + agent", unitKiB, nil, []float64{delta / float64(n)}, atMost(goalIdleKiB))
	f.Extra = extra
	return f
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
		ps = append(ps, proc{"target", b.env.local.target.pid()})
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
