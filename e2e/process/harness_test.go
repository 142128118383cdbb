//go:build linux

// Package process runs tunnel-server and tunnel-agent as real processes and
// talks to them the way kube-apiserver and the cluster's targets do: raw HTTP
// CONNECT over the unix socket or the TCP+mTLS frontend, and plain TCP targets
// on the node side. It uses only the standard library, so the bytes on the
// wire are exactly the ones written here.
//
// This file is the process side of the harness: building the binaries,
// certificates, processes with captured output, and starting tunnel-server
// (discovering its listeners from its log) and tunnel-agent. traffic_test.go
// holds the CONNECT clients, the verified transfers and the targets.
package process

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/e2e/internal/bins"
	"github.com/tunnel-project/tunnel/e2e/internal/proctest"
)

// Bounds on every wait in this package.
const (
	commandTimeout = 30 * time.Second // short-lived commands: certs, ip, flag checks
	startTimeout   = 15 * time.Second // a process logging that it is ready
	stopTimeout    = 10 * time.Second // reaping a killed or signalled process
	connectTimeout = 15 * time.Second // a CONNECT answered (server --dial-timeout is shorter)
	ioTimeout      = 30 * time.Second // one verified transfer
	pollInterval   = 20 * time.Millisecond
	serverDialWait = "3s" // --dial-timeout given to every server under test
)

// Environment variables that turn the re-executed test binary into a helper
// (see runHelper). They are set only by this package, on its own children.
const (
	helperRoleEnv = "TUNNEL_E2E_PROCESS_HELPER"
	helperAddrEnv = "TUNNEL_E2E_PROCESS_HELPER_ADDR"
)

// binDir holds tunnel-server and tunnel-agent, built once by TestMain.
var binDir string

// TestMain builds the binaries once, or, when re-executed with helperRoleEnv
// set, acts as a helper process instead of running tests.
func TestMain(m *testing.M) {
	if role := os.Getenv(helperRoleEnv); role != "" {
		os.Exit(runHelper(role, os.Getenv(helperAddrEnv)))
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := bins.Build(filepath.Join("..", ".."))
	if err != nil {
		fmt.Fprintf(os.Stderr, "process: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

func serverBin() string { return filepath.Join(binDir, "tunnel-server") }
func agentBin() string  { return filepath.Join(binDir, "tunnel-agent") }

// ---------------------------------------------------------------------------
// Short-lived commands.

// runCommand runs argv to completion within commandTimeout and returns its
// combined output and exit code; it fails the test only if argv cannot run
// at all or overruns.
func runCommand(t *testing.T, env []string, argv ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%q did not finish within %s; output:\n%s", argv, commandTimeout, out)
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	case err != nil:
		t.Fatalf("%q: %v", argv, err)
	}
	return string(out), 0
}

// mustRun runs argv and fails the test unless it exits 0.
func mustRun(t *testing.T, argv ...string) string {
	t.Helper()
	out, code := runCommand(t, nil, argv...)
	if code != 0 {
		t.Fatalf("%q exited %d:\n%s", argv, code, out)
	}
	return out
}

// ---------------------------------------------------------------------------
// Certificates.

// certSet is a directory written by `tunnel-server certs`.
type certSet struct{ dir string }

// newCerts generates a CA, server, frontend client and one agent
// certificate per node spec ("NAME=IP,IP...") into a fresh directory.
func newCerts(t *testing.T, serverIPs []string, nodes ...string) *certSet {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	argv := []string{serverBin(), "certs", "--out", dir}
	for _, n := range nodes {
		argv = append(argv, "--node", n)
	}
	for _, ip := range serverIPs {
		argv = append(argv, "--server-ip", ip)
	}
	mustRun(t, argv...)
	return &certSet{dir: dir}
}

func (c *certSet) path(name string) string { return filepath.Join(c.dir, name) }
func (c *certSet) ca() string              { return c.path("ca.crt") }
func (c *certSet) agentCert(node string) string {
	return c.path("agent-" + node + ".crt")
}
func (c *certSet) agentKey(node string) string { return c.path("agent-" + node + ".key") }

// clientTLS returns a TLS 1.3 client config that trusts this set's CA and,
// if withCert, presents its frontend client certificate.
func (c *certSet) clientTLS(t *testing.T, withCert bool) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(c.ca())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", c.ca())
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	if withCert {
		cert, err := tls.LoadX509KeyPair(c.path("client.crt"), c.path("client.key"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// ---------------------------------------------------------------------------
// Processes.

// logBuffer collects a process's output (e2e/internal/proctest).
type logBuffer = proctest.LogBuffer

// proc is a running child process whose output is captured.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *logBuffer
	done chan struct{} // closed once the process is reaped; err is then set
	err  error
}

// startProc starts argv with extra environment env. Cleanup kills it
// (SIGKILL) if it is still running, reaps it, and logs its output if the
// test failed.
func startProc(t *testing.T, name string, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: &logBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 2 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s %q: %v", name, argv, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			t.Logf("--- %s (pid %d) %q output:\n%s", name, p.cmd.Process.Pid, argv, p.out.String())
		}
	})
	return p
}

// exited reports whether the process has been reaped.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL unless the process is gone and reaps it.
func (p *proc) kill(t *testing.T) {
	if !p.exited() {
		_ = p.cmd.Process.Kill()
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Errorf("%s (pid %d) not reaped %s after SIGKILL", p.name, p.cmd.Process.Pid, stopTimeout)
	}
}

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

// waitExit waits up to timeout for the process to exit and returns its exit
// code (-1 if a signal killed it).
func (p *proc) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("%s still running %s after it was told to stop", p.name, timeout)
		return 0
	}
}

// waitLog polls the output until re matches and returns the submatches of
// the first match. It fails if the process exits first or timeout passes.
func (p *proc) waitLog(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		if p.exited() {
			// Output is complete once the process is reaped: one last look.
			if m := re.FindStringSubmatch(p.out.String()); m != nil {
				return m
			}
			t.Fatalf("%s exited (%v) before logging %q", p.name, p.err, re)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within %s", p.name, re, timeout)
		}
		time.Sleep(pollInterval)
	}
}

// eventually polls cond until it returns true, failing after timeout with
// the last message cond returned.
func eventually(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %s: %s", timeout, msg)
		}
		time.Sleep(pollInterval)
	}
}

// ---------------------------------------------------------------------------
// tunnel-server and tunnel-agent.

// serverOpts configures startServer.
type serverOpts struct {
	listenHost string   // host of the agent listener; default 127.0.0.1
	agentAddr  string   // the agent listener's host:port; default listenHost, a port the kernel picks
	frontend   bool     // also run the TCP+mTLS frontend on listenHost
	noUDS      bool     // do not run the unix socket frontend
	wrap       []string // argv prefix, e.g. ip netns exec NS
	extra      []string // more flags
}

// server is a running tunnel-server and the addresses it listens on.
type server struct {
	*proc
	certs        *certSet
	agentAddr    string // host:port for agents
	udsPath      string // unix socket frontend, if any
	frontendAddr string // TCP+mTLS frontend, if any
	adminAddr    string // metrics and health endpoints
}

// listeningRE matches the server's listener lines; see listenerAddr.
var listeningRE = regexp.MustCompile(`(?m)^.*msg=listening .*$`)

// startServer runs tunnel-server with ports chosen by the kernel and
// discovers them from its `msg=listening listener=X addr=Y` lines.
func startServer(t *testing.T, cs *certSet, o serverOpts) *server {
	t.Helper()
	host := o.listenHost
	if host == "" {
		host = "127.0.0.1"
	}
	s := &server{certs: cs}
	agentAddr := o.agentAddr
	if agentAddr == "" {
		agentAddr = net.JoinHostPort(host, "0")
	}
	args := []string{
		"--agent-listen-address", agentAddr,
		"--tls-cert-file", cs.path("server.crt"),
		"--tls-private-key-file", cs.path("server.key"),
		"--agent-ca-file", cs.ca(),
		"--dial-timeout", serverDialWait,
		"--admin-listen-address", "127.0.0.1:0",
	}
	want := []string{"agent", "admin"}
	if !o.noUDS {
		s.udsPath = socketPath(t)
		args = append(args, "--uds-path", s.udsPath)
		want = append(want, "uds")
	}
	if o.frontend {
		args = append(args, "--frontend-listen-address", net.JoinHostPort(host, "0"),
			"--frontend-ca-file", cs.ca())
		want = append(want, "frontend")
	}
	argv := append(append(append([]string{}, o.wrap...), serverBin()), append(args, o.extra...)...)
	s.proc = startProc(t, "tunnel-server", nil, argv...)
	addrs := s.waitListeners(t, want)
	s.agentAddr, s.frontendAddr, s.adminAddr = addrs["agent"], addrs["frontend"], addrs["admin"]
	if !o.noUDS && addrs["uds"] != s.udsPath {
		t.Fatalf("server logged uds addr %q, want %q", addrs["uds"], s.udsPath)
	}
	return s
}

// waitListeners polls the server's output until it has logged every
// listener in want, and returns listener → address.
func (s *server) waitListeners(t *testing.T, want []string) map[string]string {
	t.Helper()
	var addrs map[string]string
	eventually(t, startTimeout, func() (bool, string) {
		if s.exited() {
			t.Fatalf("tunnel-server exited (%v) before listening", s.err)
		}
		addrs = make(map[string]string)
		for _, line := range listeningRE.FindAllString(s.out.String(), -1) {
			addrs[logValue(line, "listener")] = logValue(line, "addr")
		}
		for _, l := range want {
			if addrs[l] == "" {
				return false, fmt.Sprintf("tunnel-server logged no msg=listening listener=%s addr=...", l)
			}
		}
		return true, ""
	})
	return addrs
}

// logValue returns the value of key in a slog text line (e2e/internal/proctest).
var logValue = proctest.LogValue

// socketPath returns a short unix socket path (e2e/internal/proctest).
func socketPath(t *testing.T) string { return proctest.SocketPath(t) }

// agentOpts configures startAgent.
type agentOpts struct {
	node     string   // --node-name
	certNode string   // whose certificate it presents; default node
	nodeIPs  []string // --node-ip values
	wrap     []string // argv prefix, e.g. ip netns exec NS
	extra    []string // more flags
}

// agentArgv returns the tunnel-agent command line for o against s.
func agentArgv(s *server, o agentOpts) []string {
	certNode := o.certNode
	if certNode == "" {
		certNode = o.node
	}
	argv := append(append([]string{}, o.wrap...), agentBin(),
		"--server-address", s.agentAddr,
		"--ca-file", s.certs.ca(),
		"--tls-cert-file", s.certs.agentCert(certNode),
		"--tls-private-key-file", s.certs.agentKey(certNode),
		"--node-name", o.node,
		"--admin-listen-address", "127.0.0.1:0")
	for _, ip := range o.nodeIPs {
		argv = append(argv, "--node-ip", ip)
	}
	return append(argv, o.extra...)
}

// registeredRE matches the agent's line once its session is accepted.
var registeredRE = regexp.MustCompile(`msg=registered .*node=(\S+)`)

// startAgent runs tunnel-agent against s and waits until it registers.
func startAgent(t *testing.T, s *server, o agentOpts) *proc {
	t.Helper()
	p := startProc(t, "tunnel-agent "+o.node, nil, agentArgv(s, o)...)
	if m := p.waitLog(t, registeredRE, startTimeout); m[1] != o.node {
		t.Fatalf("agent registered as node %q, want %q", m[1], o.node)
	}
	return p
}
