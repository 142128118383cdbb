package benchmarks

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/tunnel"
)

// The fleet test registers many agents, thousands in one process, against
// one server, as after a control-plane restart when every node reconnects
// at once. Each is the real tunnel.Agent with a certificate of its own and
// its own TLS configuration; the test measures how long the fleet takes to
// register and what each registered agent costs the server in memory.
//
// Every agent holds one file descriptor (and the server one more per agent
// when it runs in the same process). Go raises the soft RLIMIT_NOFILE to
// the hard limit at start-up, so the hard limit (ulimit -Hn) must allow
// that; when it does not, agents fail with "too many open files", which
// RunFleet's timeout error reports with a hint.

// Fleet defaults and pacing.
const (
	// defaultFleetTimeout applies when FleetOptions.Timeout is zero.
	defaultFleetTimeout = 5 * time.Minute
	// fleetProgressEvery is how often RunFleet reports progress.
	fleetProgressEvery = 100 * time.Millisecond
	// The server's memory is read every fleetSettleInterval until two
	// readings agree within fleetSettleTolerance, at most
	// fleetSettleReadings times.
	fleetSettleInterval  = 250 * time.Millisecond
	fleetSettleReadings  = 8
	fleetSettleTolerance = 0.01
	// fleetProbeTimeout bounds the diagnostic handshake of a failed fleet.
	fleetProbeTimeout = 5 * time.Second
)

// FleetOptions configures RunFleet.
type FleetOptions struct {
	// Server is the server's agent port, "host:port". ServerName is the
	// name to verify in its certificate; default: the host of Server.
	Server, ServerName string
	// CAFile is the PEM bundle that verifies the server's certificate.
	CAFile string
	// SignerCert and SignerKey are the PEM files of a CA the server trusts
	// for agents. Each fleet agent's certificate is issued under it, in
	// memory, before the clock starts.
	SignerCert, SignerKey string
	// Agents is how many agents register, named fleet-00001, fleet-00002,
	// and so on. At least 1.
	Agents int
	// Timeout bounds the registration of the whole fleet, from the start
	// of the first agent. Default 5 minutes.
	Timeout time.Duration
	// ServerRSS reads the server's resident memory in KiB; nil when the
	// server's memory cannot be read.
	ServerRSS func() (kib float64, err error)
	// Progress, if not nil, is called with the number of registered agents
	// as it grows, at most every 100ms and once when all have registered.
	Progress func(registered, total int)
}

// FleetResult is what RunFleet measured.
type FleetResult struct {
	// Agents is how many agents registered: all of them.
	Agents int
	// Total is the time from the start of the first agent until every
	// agent had registered.
	Total time.Duration
	// P50 and P99 are percentiles of the per-agent registration time, from
	// the agent's start (dial, TLS handshake, hello) to its registration.
	P50, P99 time.Duration
	// FailedSessions counts the agents' sessions that failed (a dial, TLS
	// handshake or hello that timed out or was refused) before the last
	// agent registered; each agent retries after a backoff, as in
	// production. Zero in an uncongested run.
	FailedSessions int
	// ServerRSSBeforeKiB is the server's memory before the fleet started,
	// ServerRSSAfterKiB once every agent had registered and the reading
	// settled, and ServerKiBPerAgent their difference per agent. All zero
	// when FleetOptions.ServerRSS is nil.
	ServerRSSBeforeKiB, ServerRSSAfterKiB, ServerKiBPerAgent float64
}

// RunFleet issues o.Agents agent certificates under o.SignerCert, starts
// that many agents at once in this process against o.Server, waits until
// every one has registered, reads the server's memory, stops them all and
// returns the figures. If the fleet has not registered within o.Timeout,
// the error says how many did and wraps the first error an agent hit.
func RunFleet(ctx context.Context, o FleetOptions) (FleetResult, error) {
	if o.Timeout == 0 {
		o.Timeout = defaultFleetTimeout
	}
	if err := o.validate(); err != nil {
		return FleetResult{}, err
	}
	f, err := newFleet(o)
	if err != nil {
		return FleetResult{}, err
	}
	res := FleetResult{Agents: o.Agents}
	if o.ServerRSS != nil {
		if res.ServerRSSBeforeKiB, err = o.ServerRSS(); err != nil {
			return FleetResult{}, fmt.Errorf("benchmarks: fleet: server memory before: %w", err)
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	defer f.wg.Wait()
	defer stop()
	took, total, err := f.run(runCtx, ctx, o)
	if err != nil {
		return FleetResult{}, err
	}
	res.Total = total
	res.FailedSessions, _ = f.errs.get()
	res.P50, res.P99 = fleetPercentile(took, 50), fleetPercentile(took, 99)
	if o.ServerRSS != nil {
		if res.ServerRSSAfterKiB, err = fleetSettledRSS(ctx, o.ServerRSS); err != nil {
			return FleetResult{}, fmt.Errorf("benchmarks: fleet: server memory after: %w", err)
		}
		res.ServerKiBPerAgent = (res.ServerRSSAfterKiB - res.ServerRSSBeforeKiB) / float64(o.Agents)
	}
	return res, nil
}

// validate reports the first option RunFleet cannot work with.
func (o FleetOptions) validate() error {
	if _, _, err := net.SplitHostPort(o.Server); err != nil {
		return fmt.Errorf("benchmarks: fleet: server address %q is not host:port", o.Server)
	}
	switch {
	case o.Agents < 1:
		return fmt.Errorf("benchmarks: fleet: %d agents; want at least 1", o.Agents)
	case o.Timeout < 0:
		return fmt.Errorf("benchmarks: fleet: negative timeout %s", o.Timeout)
	}
	return nil
}

// fleet is a set of agents ready to run, and what they report as they do.
type fleet struct {
	agents []*tunnel.Agent
	// started, took and seen of agent i belong to its goroutine: started
	// is set just before Run, took and seen by OnRegistered, which runs in
	// that goroutine too.
	started []time.Time
	took    []time.Duration
	seen    []bool
	// registered counts the agents that have registered at least once;
	// the one that completes the count closes all.
	registered atomic.Int64
	all        chan struct{}
	errs       fleetErrors
	wg         sync.WaitGroup
	// server and probeTLS are the first agent's address and TLS
	// configuration, for the diagnostic handshake of a failed fleet.
	server   string
	probeTLS *tls.Config
}

// fleetNode names fleet agent i (from 0): fleet-00001 and up.
func fleetNode(i int) string { return fmt.Sprintf("fleet-%05d", i+1) }

// newFleet issues the certificates and builds the agents, each with a TLS
// configuration of its own.
func newFleet(o FleetOptions) (*fleet, error) {
	pool, err := certs.LoadPool(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("benchmarks: fleet: %w", err)
	}
	nodes := make([]certs.Node, o.Agents)
	for i := range nodes {
		nodes[i].Name = fleetNode(i)
	}
	ids, err := issueFleet(o, nodes)
	if err != nil {
		return nil, fmt.Errorf("benchmarks: fleet: %w", err)
	}
	f := &fleet{
		agents: make([]*tunnel.Agent, o.Agents), started: make([]time.Time, o.Agents),
		took: make([]time.Duration, o.Agents), seen: make([]bool, o.Agents),
		all: make(chan struct{}), server: o.Server,
	}
	for i, id := range ids {
		cfg := tunnel.DefaultAgentConfig()
		cfg.ServerAddress = o.Server
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{id}, RootCAs: pool, ServerName: o.ServerName}
		cfg.NodeName = nodes[i].Name
		cfg.Logger = slog.New(&fleetLog{node: nodes[i].Name, errs: &f.errs})
		cfg.OnRegistered = f.onRegistered(i)
		if f.agents[i], err = tunnel.NewAgent(cfg); err != nil {
			return nil, fmt.Errorf("benchmarks: fleet: agent %s: %w", nodes[i].Name, err)
		}
		if i == 0 {
			f.probeTLS = probeConfig(cfg.TLS, o.Server)
		}
	}
	return f, nil
}

// issueFleet issues the nodes' certificates under o's signer, split
// across the CPUs.
func issueFleet(o FleetOptions, nodes []certs.Node) ([]tls.Certificate, error) {
	ids := make([]tls.Certificate, len(nodes))
	parts := min(runtime.GOMAXPROCS(0), len(nodes))
	errs := make([]error, parts)
	var wg sync.WaitGroup
	for p := range parts {
		lo, hi := p*len(nodes)/parts, (p+1)*len(nodes)/parts
		wg.Go(func() {
			var got []tls.Certificate
			got, errs[p] = certs.IssueAgents(o.SignerCert, o.SignerKey, nodes[lo:hi])
			copy(ids[lo:hi], got)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// onRegistered returns agent i's OnRegistered hook. The agent's first
// registration records its time and counts it; later ones, after a lost
// session, change nothing.
func (f *fleet) onRegistered(i int) func() {
	return func() {
		if f.seen[i] {
			return
		}
		f.seen[i] = true
		f.took[i] = time.Since(f.started[i])
		if f.registered.Add(1) == int64(len(f.agents)) {
			close(f.all)
		}
	}
}

// run starts every agent under runCtx and waits until all have registered,
// returning each one's registration time and the time from the first start
// to the last registration. parent is the caller's context: its end,
// unlike the timeout's, is not the fleet's fault.
func (f *fleet) run(runCtx, parent context.Context, o FleetOptions) ([]time.Duration, time.Duration, error) {
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	start := time.Now()
	for i, a := range f.agents {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.started[i] = time.Now()
			a.Run(runCtx)
		}()
	}
	if err := f.await(ctx, parent, o); err != nil {
		return nil, 0, err
	}
	var total time.Duration
	for i, t := range f.took {
		total = max(total, f.started[i].Add(t).Sub(start))
	}
	return f.took, total, nil
}

// await waits until every agent has registered or ctx ends, reporting
// progress meanwhile. Once all is closed, every agent's started and took
// are safe to read: each wrote them before adding itself to registered.
func (f *fleet) await(ctx, parent context.Context, o FleetOptions) error {
	progress := fleetProgress{report: o.Progress, total: len(f.agents)}
	tick := time.NewTicker(fleetProgressEvery)
	defer tick.Stop()
	for {
		select {
		case <-f.all:
			progress.update(len(f.agents))
			return nil
		case <-ctx.Done():
			return f.failure(parent, int(f.registered.Load()), o.Timeout)
		case <-tick.C:
			progress.update(int(f.registered.Load()))
		}
	}
}

// failure explains why the fleet did not register: how many agents did and
// the first error any agent hit, wrapped.
func (f *fleet) failure(parent context.Context, registered int, timeout time.Duration) error {
	msg := fmt.Sprintf("benchmarks: fleet: %d of %d agents registered within %s", registered, len(f.agents), timeout)
	if parent.Err() != nil {
		msg = fmt.Sprintf("benchmarks: fleet: stopped (%v) with %d of %d agents registered", context.Cause(parent), registered, len(f.agents))
	}
	failed, first := f.errs.get()
	if first == nil {
		return errors.New(msg + "; no agent reported an error")
	}
	hint := ""
	var rejected *tunnel.RejectedError
	switch {
	case errors.Is(first, syscall.EMFILE):
		hint = " (each agent needs a file descriptor: raise the hard limit, ulimit -Hn)"
	case parent.Err() == nil && !errors.As(first, &rejected):
		if err := f.probe(parent); err != nil {
			hint = fmt.Sprintf("; a TLS connection as %s alone ends with: %v", fleetNode(0), err)
		}
	}
	return fmt.Errorf("%s; agents reported %d failed sessions, the first: %w%s", msg, failed, first, hint)
}

// probeConfig is the TLS configuration of an agent as tunnel.NewAgent
// completes it: TLS 1.3, and the server's host as the name to verify.
func probeConfig(agent *tls.Config, server string) *tls.Config {
	c := agent.Clone()
	c.MinVersion = tls.VersionTLS13
	if c.ServerName == "" {
		c.ServerName, _, _ = net.SplitHostPort(server)
	}
	return c
}

// probe connects once with the first agent's TLS configuration and waits
// for the server's verdict on its certificate. In TLS 1.3 the client
// finishes its handshake before the server checks the client certificate,
// so an agent whose certificate the server refuses sees only a closed
// connection ("reading hello reply: EOF"); the probe's read returns the
// server's alert instead, such as "tls: unknown certificate authority". It
// returns nil when the server seems to accept the certificate.
func (f *fleet) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, fleetProbeTimeout)
	defer cancel()
	d := tls.Dialer{Config: f.probeTLS}
	c, err := d.DialContext(ctx, "tcp", f.server)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(fleetProbeTimeout))
	if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// fleetProgress calls FleetOptions.Progress when the count has grown.
type fleetProgress struct {
	report       func(registered, total int)
	total, shown int
}

func (p *fleetProgress) update(registered int) {
	if p.report == nil || registered == p.shown {
		return
	}
	p.shown = registered
	p.report(registered, p.total)
}

// fleetErrors counts the failed sessions of a fleet and keeps the first
// one's error.
type fleetErrors struct {
	mu     sync.Mutex
	failed int
	first  error
}

func (e *fleetErrors) add(node string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failed++
	if e.first == nil {
		e.first = fmt.Errorf("agent %s: %w", node, err)
	}
}

func (e *fleetErrors) get() (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.failed, e.first
}

// fleetLog is the slog.Handler of one fleet agent. It keeps the error of
// every failed session (the agent logs each with an "err" attribute at
// warning level or above) and drops everything else, so thousands of
// agents do not flood the output.
type fleetLog struct {
	node string
	errs *fleetErrors
}

func (h *fleetLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *fleetLog) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "err" {
			return true
		}
		err, ok := a.Value.Any().(error)
		if !ok {
			err = errors.New(a.Value.String())
		}
		h.errs.add(h.node, err)
		return false
	})
	return nil
}

func (h *fleetLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *fleetLog) WithGroup(string) slog.Handler      { return h }

// fleetSettledRSS reads the server's memory every fleetSettleInterval until two
// readings in a row agree within fleetSettleTolerance, or after
// fleetSettleReadings readings, and returns the last. The first reading
// waits an interval too, so the server finishes the registrations it has
// already acknowledged.
func fleetSettledRSS(ctx context.Context, read func() (float64, error)) (float64, error) {
	prev := math.NaN()
	for range fleetSettleReadings {
		select {
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		case <-time.After(fleetSettleInterval):
		}
		cur, err := read()
		if err != nil {
			return 0, err
		}
		if math.Abs(cur-prev) <= fleetSettleTolerance*prev {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// fleetPercentile returns the p-th percentile of d by the nearest-rank method.
func fleetPercentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100 // ceil(p/100 × n)
	return s[max(rank, 1)-1]
}
