package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// env is what the tests run against: the tunnel, the direct baseline, the
// probe and the processes whose memory and CPU are measured.
type env struct {
	tunnel benchmarks.Dialer
	direct benchmarks.Dialer // nil with --direct=false
	probe  benchmarks.Dialer // nil unless --local with --probe
	target string            // the target's address (the direct dial)
	dest   string            // what CONNECT asks for
	local  *localRun         // --local only
	own    *benchmarks.Target
	cfg    *config
}

// proc is a process whose resources a test reads.
type proc struct {
	name    string
	pid     int
	metrics string // host:port of its /metrics, if known
}

// setupEnv starts (--local) or locates the tunnel and the target.
func setupEnv(ctx context.Context, c *config, say func(string, ...any)) (_ *env, err error) {
	e := &env{cfg: c}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	switch {
	case c.local:
		if e.local, err = startLocal(ctx, c.bin, c.probe, say); err != nil {
			return nil, err
		}
		e.target = e.local.targetAdr
		e.tunnel = benchmarks.ConnectDialer{Network: "unix", Addr: e.local.sock}
		if e.local.probe != nil {
			e.probe = benchmarks.ConnectDialer{Network: "unix", Addr: e.local.probe.sock}
		}
	case c.target != "":
		e.target = c.target
	default:
		if err := e.serveTarget(c.targetListen); err != nil {
			return nil, err
		}
	}
	e.dest = e.target
	if c.dest != "" {
		e.dest = c.dest
	}
	if !c.local {
		if e.tunnel, err = frontendDialer(c); err != nil {
			return nil, err
		}
	}
	e.tunnel = withDest(e.tunnel, e.dest)
	if e.probe != nil {
		e.probe = withDest(e.probe, e.dest)
	}
	if c.direct {
		e.direct = benchmarks.DirectDialer{Addr: e.target}
	}
	return e, nil
}

// serveTarget runs a target in this process.
func (e *env) serveTarget(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--target-listen: %w", err)
	}
	e.own = benchmarks.NewTarget(ln)
	go e.own.Serve()
	e.target = ln.Addr().String()
	return nil
}

func withDest(d benchmarks.Dialer, dest string) benchmarks.Dialer {
	cd := d.(benchmarks.ConnectDialer)
	cd.Dest = dest
	return cd
}

// frontendDialer is the ConnectDialer of --uds or --frontend.
func frontendDialer(c *config) (benchmarks.Dialer, error) {
	if c.uds != "" {
		return benchmarks.ConnectDialer{Network: "unix", Addr: c.uds}, nil
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return nil, usageError{fmt.Errorf("--cert-file/--key-file: %w", err)}
	}
	pem, err := os.ReadFile(c.caFile)
	if err != nil {
		return nil, usageError{fmt.Errorf("--ca-file: %w", err)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, usageError{fmt.Errorf("--ca-file: no PEM certificate in %s", c.caFile)}
	}
	name := c.serverName
	if name == "" {
		if name, _, err = net.SplitHostPort(c.frontend); err != nil {
			return nil, usageError{fmt.Errorf("--frontend: %w", err)}
		}
	}
	t := &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: name,
		MinVersion: tls.VersionTLS13,
	}
	return benchmarks.ConnectDialer{Network: "tcp", Addr: c.frontend, TLS: t}, nil
}

// procs returns the server and agent processes, those that are known.
func (e *env) procs() []proc {
	var ps []proc
	server, agent := proc{"server", e.cfg.serverPID, ""}, proc{"agent", e.cfg.agentPID, ""}
	if l := e.local; l != nil {
		server = proc{"server", l.server.pid(), l.serverAdmin}
		agent = proc{"agent", l.agent.pid(), l.agentAdmin}
	}
	if server.pid > 0 {
		ps = append(ps, server)
	}
	if agent.pid > 0 {
		ps = append(ps, agent)
	}
	return ps
}

// probeProcs returns the probe's server and agent processes, or none
// without the probe.
func (e *env) probeProcs() []proc {
	if e.local == nil || e.local.probe == nil {
		return nil
	}
	p := e.local.probe
	return []proc{{"server", p.server.pid(), p.serverMetrics}, {"agent", p.agent.pid(), p.agentMetrics}}
}

// allProcs returns every process of the run that this tool knows besides
// itself: the tunnel's, the probe's and the target.
func (e *env) allProcs() []proc {
	ps := e.procs()
	for _, p := range e.probeProcs() {
		p.name = "probe " + p.name
		ps = append(ps, p)
	}
	if e.local != nil {
		ps = append(ps, proc{name: "target", pid: e.local.target.pid()})
	}
	return ps
}

// measurable reports whether both the server and the agent can be read:
// the memory and CPU figures cover the two together.
func (e *env) measurable() bool { return len(e.procs()) == 2 }

// cpu returns the CPU seconds the server and agent have used.
func (e *env) cpu() (float64, error) { return cpuOf(e.procs()) }

// cpuOf returns the CPU seconds the processes ps have used together.
func cpuOf(ps []proc) (float64, error) {
	var sum float64
	for _, p := range ps {
		s, err := cpuSeconds(p.pid)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.name, err)
		}
		sum += s
	}
	return sum, nil
}

// rss returns the server's and agent's resident memory in KiB, by name.
func (e *env) rss() (map[string]float64, error) { return rssOf(e.procs()) }

// rssOf returns each process's resident memory in KiB, by name.
func rssOf(ps []proc) (map[string]float64, error) {
	m := make(map[string]float64)
	for _, p := range ps {
		kib, err := rssKiB(p.pid)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		m[p.name] = kib
	}
	return m, nil
}

// goroutinesOf reads each process's goroutine count from its /metrics,
// by name; processes without a known /metrics are left out.
func goroutinesOf(ctx context.Context, ps []proc) (map[string]float64, error) {
	m := make(map[string]float64)
	for _, p := range ps {
		if p.metrics == "" {
			continue
		}
		n, err := scrape(ctx, p.metrics, metricGoroutines)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		m[p.name] = n
	}
	return m, nil
}

// fresh restarts the local server and agent, so a memory figure starts
// from a clean process. It does nothing against a deployment.
func (e *env) fresh(ctx context.Context, say func(string, ...any)) error {
	if e.local == nil {
		return nil
	}
	say("restarting tunnel-server and tunnel-agent for a clean memory baseline")
	return e.local.restart(ctx)
}

// freshProbe restarts the probe's processes, as fresh does the tunnel's.
func (e *env) freshProbe(ctx context.Context, say func(string, ...any)) error {
	if e.local == nil || e.local.probe == nil {
		return nil
	}
	say("restarting the probe server and probe agent for a clean memory baseline")
	return e.local.restartProbe(ctx)
}

// explain turns a test's error into one naming the cause: a local process
// that died says so.
func (e *env) explain(test string, err error) error {
	if e.local != nil {
		if dead := e.local.alive(); dead != nil {
			return fmt.Errorf("%s: %w (cause: %w)", test, err, dead)
		}
	}
	return fmt.Errorf("%s: %w", test, err)
}

func (e *env) close() error {
	var errs []error
	if e.own != nil {
		errs = append(errs, e.own.Close())
	}
	if e.local != nil {
		errs = append(errs, e.local.close())
	}
	return errors.Join(errs...)
}

// mode names how the tunnel was reached, for the report.
func (e *env) mode() string {
	switch {
	case e.local != nil:
		return "local"
	case e.cfg.uds != "":
		return "uds"
	default:
		return "frontend"
	}
}

// frontend is where the tunnels were opened, for the report.
func (e *env) frontend() string {
	if e.local != nil {
		return e.local.sock
	}
	return e.cfg.uds + e.cfg.frontend
}
