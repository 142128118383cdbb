package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// The probe (benchmarks.ProbeServer, benchmarks.ProbeAgent) runs beside
// the tunnel in --local mode as two processes of this binary, so that its
// CPU, memory and goroutines are read exactly as the tunnel-server's and
// tunnel-agent's are: "tunnel-bench probe-server" answers CONNECT on a unix
// socket like the tunnel-server's frontend, and "tunnel-bench probe-agent"
// dials the target. Both use the certificates of the local run: the probe
// agent presents the server certificate and the probe server the agent's,
// each verified under the run's CA.

// metricsLine is what a probe process prints once its /metrics listens.
var metricsLine = regexp.MustCompile(`^metrics addr=(\S+)`)

// runProbeServer serves the probe's first relay until killed.
func runProbeServer(args []string, stdout io.Writer) error {
	fs := pflag.NewFlagSet(prog+" probe-server", pflag.ContinueOnError)
	listen := fs.String("listen", "", "unix socket to answer CONNECT requests on")
	agent := fs.String("agent", "", "host:port of the probe agent")
	ca := fs.String("ca-file", "", "CA bundle that verifies the probe agent")
	cert := fs.String("cert-file", "", "client certificate presented to the probe agent (PEM)")
	key := fs.String("key-file", "", "private key of --cert-file (PEM)")
	name := fs.String("server-name", "localhost", "name to verify in the probe agent's certificate")
	metrics := fs.String("metrics-listen", "127.0.0.1:0", "host:port serving go_goroutines on /metrics")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if *listen == "" || *agent == "" {
		return usageError{errors.New("probe-server needs --listen and --agent")}
	}
	cfg, err := benchmarks.ProbeServerTLS(*ca, *cert, *key, *name)
	if err != nil {
		return usageError{err}
	}
	ln, err := net.Listen("unix", *listen)
	if err != nil {
		return fmt.Errorf("probe-server: %w", err)
	}
	return serveProbe(benchmarks.NewProbeServer(ln, *agent, cfg), *metrics, stdout)
}

// runProbeAgent serves the probe's second relay until killed.
func runProbeAgent(args []string, stdout io.Writer) error {
	fs := pflag.NewFlagSet(prog+" probe-agent", pflag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "host:port for the probe server's TLS connections")
	ca := fs.String("ca-file", "", "CA bundle that verifies the probe server's client certificate")
	cert := fs.String("cert-file", "", "server certificate (PEM)")
	key := fs.String("key-file", "", "private key of --cert-file (PEM)")
	metrics := fs.String("metrics-listen", "127.0.0.1:0", "host:port serving go_goroutines on /metrics")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg, err := benchmarks.ProbeAgentTLS(*ca, *cert, *key)
	if err != nil {
		return usageError{err}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("probe-agent: %w", err)
	}
	return serveProbe(benchmarks.NewProbeAgent(tls.NewListener(ln, cfg)), *metrics, stdout)
}

// relay is a probe relay: benchmarks.ProbeServer or ProbeAgent.
type relay interface {
	Serve() error
	Addr() net.Addr
}

// serveProbe starts the metrics listener, says where both listen, and
// serves r until killed.
func serveProbe(r relay, metrics string, stdout io.Writer) error {
	addr, err := serveMetrics(metrics)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "metrics addr=%s\n", addr)
	fmt.Fprintf(stdout, "listening addr=%s\n", r.Addr())
	return r.Serve()
}

// probeRun is the probe's two processes in a local run.
type probeRun struct {
	sock   string // the probe server's CONNECT socket
	server *child
	agent  *child
	// serverMetrics and agentMetrics are their /metrics addresses.
	serverMetrics, agentMetrics string
}

// startProbe starts the probe agent, then the probe server pointed at it,
// and waits until both listen.
func (l *localRun) startProbe(ctx context.Context) (err error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	defer func() {
		if err != nil {
			l.stopProbe()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this executable to run the probe: %w", err)
	}
	p := &probeRun{sock: filepath.Join(l.dir, "probe.sock")}
	l.probe = p
	os.Remove(p.sock) // left by a probe server stopped for a restart
	var agentAddr string
	if p.agent, agentAddr, p.agentMetrics, err = startRelay(ctx, "probe agent", self, "probe-agent",
		"--ca-file", l.file("ca.crt"), "--cert-file", l.file("server.crt"), "--key-file", l.file("server.key")); err != nil {
		return err
	}
	p.server, _, p.serverMetrics, err = startRelay(ctx, "probe server", self, "probe-server",
		"--listen", p.sock, "--agent", agentAddr, "--server-name", "localhost", "--ca-file", l.file("ca.crt"),
		"--cert-file", l.file("agent-"+localNode+".crt"), "--key-file", l.file("agent-"+localNode+".key"))
	return err
}

// startRelay starts one probe process and returns it with the addresses of
// its relay and its metrics.
func startRelay(ctx context.Context, name, self string, args ...string) (*child, string, string, error) {
	c, err := startChild(name, self, args...)
	if err != nil {
		return nil, "", "", err
	}
	m, err := c.waitLine(ctx, targetLine)
	if err != nil {
		return c, "", "", err
	}
	mm, err := c.waitLine(ctx, metricsLine)
	if err != nil {
		return c, "", "", err
	}
	return c, m[1], mm[1], nil
}

// stopProbe stops both probe processes.
func (l *localRun) stopProbe() error {
	if l.probe == nil {
		return nil
	}
	var errs []error
	for _, c := range []**child{&l.probe.server, &l.probe.agent} {
		if *c != nil {
			errs = append(errs, (*c).stop())
			*c = nil
		}
	}
	return errors.Join(errs...)
}

// restartProbe replaces the probe processes with fresh ones, for a clean
// memory baseline.
func (l *localRun) restartProbe(ctx context.Context) error {
	if err := l.stopProbe(); err != nil {
		return err
	}
	return l.startProbe(ctx)
}
