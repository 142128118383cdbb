package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Test names, in the order they run.
const (
	testThroughput = "throughput"
	testLatency    = "latency"
	testPinned     = "pinned"
	testDialRate   = "dialrate"
	testIdle       = "idle"
	testSlowReader = "slowreader"
	testFleet      = "fleet"
)

var allTests = []string{testThroughput, testLatency, testPinned, testDialRate, testIdle, testSlowReader, testFleet}

// defaultTests run unless --tests or arguments say otherwise; the fleet
// test joins them with --local (which has the CA to issue agent
// certificates) or when --fleet or --fleet-server is given.
var defaultTests = []string{testThroughput, testLatency, testPinned, testDialRate, testIdle, testSlowReader}

// config holds every flag. Flags bind one-to-one to fields.
type config struct {
	local bool
	bin   string

	uds, frontend                 string
	caFile, certFile, keyFile     string
	serverName                    string
	target, targetListen, dest    string
	direct                        bool
	probe                         bool
	pinCPU                        int
	serverPID, agentPID           int
	tests                         []string
	duration                      time.Duration
	repeat                        int
	quick                         bool
	streams, concurrency, idle    int
	fleet                         int
	fleetServer, fleetCA          string
	fleetServerName               string
	fleetSignerCert, fleetSignKey string
	fleetTimeout                  time.Duration
	jsonOut, svgOut               string
	seed                          uint64
}

func (c *config) bind(fs *pflag.FlagSet) {
	fs.BoolVar(&c.local, "local", false, "start tunnel-server, one tunnel-agent and a target on loopback, benchmark them, stop them")
	fs.StringVar(&c.bin, "bin", "", "with --local: directory holding tunnel-server and tunnel-agent (default: go build them from the module into a temporary directory)")
	fs.StringVar(&c.uds, "uds", "", "unix socket of a running tunnel-server's CONNECT frontend")
	fs.StringVar(&c.frontend, "frontend", "", "host:port of a running tunnel-server's TCP CONNECT frontend (mutual TLS)")
	fs.StringVar(&c.caFile, "ca-file", "", "with --frontend: CA bundle that verifies the server")
	fs.StringVar(&c.certFile, "cert-file", "", "with --frontend: client certificate (PEM)")
	fs.StringVar(&c.keyFile, "key-file", "", "with --frontend: private key of --cert-file (PEM)")
	fs.StringVar(&c.serverName, "server-name", "", "with --frontend: name to verify in the server's certificate (default: the host of --frontend)")
	fs.StringVar(&c.target, "target", "", "host:port of a running target (tunnel-bench target); default: serve one in this process on --target-listen")
	fs.StringVar(&c.targetListen, "target-listen", "127.0.0.1:0", "where this process serves its own target when --target is not given")
	fs.StringVar(&c.dest, "connect-to", "", "destination to CONNECT to, if not the target's address (e.g. NODE_NAME:PORT)")
	fs.BoolVar(&c.direct, "direct", true, "measure the direct TCP baseline to the target (--direct=false when the target is unreachable without the tunnel)")
	fs.BoolVar(&c.probe, "probe", true, "with --local: measure the probe beside the tunnel, a plain relay with one TLS 1.3 connection per tunnel and no multiplexer (--probe=false skips it)")
	fs.IntVar(&c.pinCPU, "pin-cpu", 0, "the CPU the pinned test moves every process of the run to")
	fs.IntVar(&c.serverPID, "server-pid", 0, "PID of tunnel-server, for memory and CPU figures (known in --local mode)")
	fs.IntVar(&c.agentPID, "agent-pid", 0, "PID of the tunnel-agent serving the target, for memory and CPU figures (known in --local mode)")
	fs.StringSliceVar(&c.tests, "tests", nil, "tests to run: "+strings.Join(allTests, ",")+" or all (default: all; fleet only with --local, --fleet or --fleet-server)")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "how long each measurement runs (each case, on each path)")
	fs.IntVar(&c.repeat, "repeat", 3, "runs of each case; the table shows their median")
	fs.BoolVar(&c.quick, "quick", false, "a smoke run of a few seconds: short durations and small counts unless given")
	fs.IntVar(&c.streams, "streams", 8, "streams of the aggregate throughput cases")
	fs.IntVar(&c.concurrency, "concurrency", 8, "concurrent dialers of the dial-rate test")
	fs.IntVar(&c.idle, "idle", 10000, "idle tunnels to hold open at once")
	fs.IntVar(&c.fleet, "fleet", 1000, "agents the fleet test registers in this process")
	fs.StringVar(&c.fleetServer, "fleet-server", "", "fleet test without --local: the server's agent port, host:port")
	fs.StringVar(&c.fleetCA, "fleet-ca-file", "", "fleet test without --local: CA bundle that verifies the server's agent port")
	fs.StringVar(&c.fleetServerName, "fleet-server-name", "", "fleet test: name to verify in the server's certificate (default: the host of --fleet-server)")
	fs.StringVar(&c.fleetSignerCert, "fleet-signer-cert", "", "fleet test without --local: CA certificate the server trusts for agents; fleet certificates are issued under it")
	fs.StringVar(&c.fleetSignKey, "fleet-signer-key", "", "fleet test without --local: private key of --fleet-signer-cert")
	fs.DurationVar(&c.fleetTimeout, "fleet-timeout", 5*time.Minute, "how long the fleet may take to register")
	fs.StringVar(&c.jsonOut, "json", "", "write every figure, with machine and settings, as JSON to this file")
	fs.StringVar(&c.svgOut, "svg", "", "write a bar chart of the tunnel/baseline ratios as SVG to this file")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the pseudorandom streams")
}

// quickDefaults shrinks every setting the user did not give.
func (c *config) quickDefaults(fs *pflag.FlagSet) {
	set := func(name string, apply func()) {
		if !fs.Changed(name) {
			apply()
		}
	}
	set("duration", func() { c.duration = 300 * time.Millisecond })
	set("repeat", func() { c.repeat = 1 })
	set("idle", func() { c.idle = 200 })
	set("fleet", func() { c.fleet = 20 })
	set("streams", func() { c.streams = 4 })
	set("fleet-timeout", func() { c.fleetTimeout = time.Minute })
}

// selectTests settles which tests run, from --tests, arguments and --fleet.
func (c *config) selectTests(fs *pflag.FlagSet) error {
	c.tests = append(c.tests, fs.Args()...)
	switch {
	case slices.Contains(c.tests, "all"):
		c.tests = allTests
	case len(c.tests) == 0:
		c.tests = slices.Clone(defaultTests)
		if c.local || fs.Changed("fleet") || c.fleetServer != "" {
			c.tests = append(c.tests, testFleet)
		}
	}
	for _, t := range c.tests {
		if !slices.Contains(allTests, t) {
			return fmt.Errorf("unknown test %q (want %s or all)", t, strings.Join(allTests, ", "))
		}
	}
	return nil
}

// validate reports the first flag that cannot work.
func (c *config) validate(fs *pflag.FlagSet) error {
	switch {
	case c.local && (c.uds != "" || c.frontend != "" || c.target != ""):
		return errors.New("--local starts its own server and target: drop --uds, --frontend and --target")
	case !c.local && (c.uds == "") == (c.frontend == ""):
		return errors.New("give exactly one of --uds or --frontend (or --local)")
	case c.frontend != "" && (c.caFile == "" || c.certFile == "" || c.keyFile == ""):
		return errors.New("--frontend needs --ca-file, --cert-file and --key-file")
	case c.bin != "" && !c.local:
		return errors.New("--bin only applies with --local")
	case c.probe && !c.local && fs.Changed("probe"):
		return errors.New("--probe needs --local, which starts the probe's relays beside the tunnel")
	case c.pinCPU < 0 || c.pinCPU >= maxPinCPU:
		return fmt.Errorf("--pin-cpu must be a CPU number from 0 to %d, not %d", maxPinCPU-1, c.pinCPU)
	case c.duration <= 0:
		return fmt.Errorf("--duration must be positive, not %s", c.duration)
	case c.repeat < 1:
		return fmt.Errorf("--repeat must be at least 1, not %d", c.repeat)
	case c.streams < 1:
		return fmt.Errorf("--streams must be at least 1, not %d", c.streams)
	case c.concurrency < 1:
		return fmt.Errorf("--concurrency must be at least 1, not %d", c.concurrency)
	case c.idle < 1:
		return fmt.Errorf("--idle must be at least 1, not %d", c.idle)
	case c.fleet < 1:
		return fmt.Errorf("--fleet must be at least 1, not %d", c.fleet)
	}
	if !c.local && slices.Contains(c.tests, testFleet) &&
		(c.fleetServer == "" || c.fleetCA == "" || c.fleetSignerCert == "" || c.fleetSignKey == "") {
		return errors.New("the fleet test without --local needs --fleet-server, --fleet-ca-file, --fleet-signer-cert and --fleet-signer-key")
	}
	return nil
}
