// Command tunnel-bench measures a tunnel-server and its agents against a
// direct TCP connection to the same target, in the same run, and with
// --local also against the probe: a plain relay with one TLS 1.3
// connection per tunnel and no multiplexer (benchmarks.ProbeServer).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/benchmarks"
)

const prog = "tunnel-bench"

// usageError is a flag mistake: the tool exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole tool; it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	var err error
	if sub, ok := subcommands[firstArg(args)]; ok {
		err = sub(args[1:], stdout)
	} else {
		err = runBench(args, stdout, stderr)
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, pflag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 1
	}
}

// subcommands are the processes --local starts from this very binary
// besides tunnel-server and tunnel-agent: the target and the probe's two
// relays.
var subcommands = map[string]func(args []string, stdout io.Writer) error{
	"target":       runTarget,
	"probe-server": runProbeServer,
	"probe-agent":  runProbeAgent,
}

func firstArg(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

// parseFlags parses args quietly: a mistake becomes the one-line
// usageError, and --help prints the flags to stdout.
func parseFlags(fs *pflag.FlagSet, args []string, stdout io.Writer) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintf(stdout, "Usage of %s:\n%s", fs.Name(), fs.FlagUsages())
		return err
	}
	if err != nil {
		return usageError{err}
	}
	return nil
}

// runTarget serves the benchmark protocol until killed.
func runTarget(args []string, stdout io.Writer) error {
	fs := pflag.NewFlagSet(prog+" target", pflag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve the target on")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	raiseNoFile()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	t := benchmarks.NewTarget(ln)
	fmt.Fprintf(stdout, "listening addr=%s\n", ln.Addr())
	return t.Serve()
}

func runBench(args []string, stdout, stderr io.Writer) error {
	var c config
	fs := pflag.NewFlagSet(prog, pflag.ContinueOnError)
	c.bind(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if c.quick {
		c.quickDefaults(fs)
	}
	if err := c.selectTests(fs); err != nil {
		return usageError{err}
	}
	if err := c.validate(fs); err != nil {
		return usageError{err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{cfg: &c, start: time.Now(), out: stderr}
	nofile := raiseNoFile() // before any child starts: they inherit it
	e, err := setupEnv(ctx, &c, b.say)
	if err != nil {
		return err
	}
	defer e.close()
	b.env = e
	if err := b.preflight(ctx); err != nil {
		return err
	}
	err = b.runTests(ctx)
	if len(b.figs) > 0 {
		fmt.Fprintln(stdout)
		printTable(stdout, b.figs)
	}
	if err != nil {
		return err
	}
	return b.write(ctx, nofile)
}

// write saves the JSON report and the chart, as asked.
func (b *bench) write(ctx context.Context, nofile uint64) error {
	c := b.cfg
	root, _ := moduleRoot(ctx)
	r := &report{
		Tool: prog, Started: b.start, Seconds: time.Since(b.start).Seconds(),
		Machine: describeMachine(ctx, root), Tests: c.tests, Figures: b.figs,
		Settings: settings{
			Mode: b.env.mode(), Frontend: b.env.frontend(), Target: b.env.target, Dest: b.env.dest,
			Direct: c.direct, Probe: b.env.probe != nil, PinCPU: c.pinCPU, DurationSec: c.duration.Seconds(), Repeat: c.repeat, Streams: c.streams,
			Concurrency: c.concurrency, Idle: c.idle, Fleet: c.fleet, Quick: c.quick, Seed: c.seed,
			NoFile: nofile, ServerPID: c.serverPID, AgentPID: c.agentPID,
		},
	}
	if c.jsonOut != "" {
		if err := writeJSON(c.jsonOut, r); err != nil {
			return err
		}
		b.say("wrote %s", c.jsonOut)
	}
	if c.svgOut != "" {
		if err := writeSVG(c.svgOut, r); err != nil {
			return err
		}
		b.say("wrote %s", c.svgOut)
	}
	return nil
}
