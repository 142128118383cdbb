//go:build linux

// Package attack attacks the real tunnel-server and tunnel-agent binaries
// over loopback and asserts the safe outcome: the attack is refused or
// bounded, legitimate traffic keeps flowing, and the server's goroutines,
// open files and memory return to their baseline afterwards (read from its
// admin listener's /metrics).
//
// Every byte goes to 127.0.0.0/8. The tests are short by default (the whole
// package in well under three minutes on a loaded two-core machine, -race
// on the test binary); -attack.long (make target) floods longer and harder.
//
// TUNNEL_ATTACK_BIN_DIR=DIR attacks the binaries in DIR instead of
// building the working tree (to compare with an older build).
//
// This file is the process side of the harness: flags, the binaries,
// certificates, processes and their admin listeners, and the resource
// baseline. client_test.go holds the CONNECT clients and the targets,
// yamux_raw_test.go the raw yamux peer.
package attack

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/e2e/internal/bins"
	"github.com/tunnel-project/tunnel/e2e/internal/proctest"
)

var (
	longRun = flag.Bool("attack.long", false,
		"attack longer and harder (floods of tens of seconds, a million pings); the make target passes it")
)

// pick returns short, or long under -attack.long.
func pick[T any](short, long T) T {
	if *longRun {
		return long
	}
	return short
}

// Bounds on every wait of the harness itself.
const (
	commandTimeout = 30 * time.Second
	startTimeout   = 20 * time.Second
	stopTimeout    = 10 * time.Second
	ioTimeout      = 20 * time.Second
	pollInterval   = 25 * time.Millisecond
	settleTimeout  = 30 * time.Second // resources back at baseline after an attack
)

// Loopback nodes: Linux routes all of 127.0.0.0/8 to lo, so each node gets
// an address of its own and its targets bind to it.
const (
	nodeA    = "node-a"
	nodeAIP  = "127.0.0.2"
	nodeB    = "node-b"
	nodeBIP  = "127.0.0.3"
	nodeEvil = "node-evil" // a node whose key the attacker holds
	evilIP   = "127.0.0.4"
	noNodeIP = "127.0.0.9" // no agent serves it
)

var binDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

// binDirEnv names a directory holding prebuilt tunnel-server and
// tunnel-agent binaries to attack instead of building the working tree
// (to compare a fix with the last commit, say).
const binDirEnv = "TUNNEL_ATTACK_BIN_DIR"

func runTests(m *testing.M) int {
	if dir := os.Getenv(binDirEnv); dir != "" {
		binDir = dir
		return m.Run()
	}
	dir, err := bins.Build(filepath.Join("..", ".."))
	if err != nil {
		fmt.Fprintf(os.Stderr, "attack: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

func serverBin() string { return filepath.Join(binDir, "tunnel-server") }
func agentBin() string  { return filepath.Join(binDir, "tunnel-agent") }

// runCommand runs argv to completion and returns its combined output and
// exit code.
func runCommand(t *testing.T, argv ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%q did not finish within %s:\n%s", argv, commandTimeout, out)
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	case err != nil:
		t.Fatalf("%q: %v", argv, err)
	}
	return string(out), 0
}

var (
	helpOnce sync.Once
	helpText string
)

// serverHasFlag reports whether `tunnel-server --help` lists flag.
func serverHasFlag(t *testing.T, name string) bool {
	t.Helper()
	helpOnce.Do(func() { helpText, _ = runCommand(t, serverBin(), "--help") })
	return strings.Contains(helpText, "--"+name+" ")
}

// ---------------------------------------------------------------------------
// Certificates.

// certSet is a directory written by `tunnel-server certs`, and its CA for
// minting the odd certificates an attacker might hold.
type certSet struct {
	dir    string
	caCert *x509.Certificate
	caKey  crypto.Signer
}

// newCerts generates a CA, server, frontend client and one agent
// certificate per node spec ("NAME=IP,...").
func newCerts(t *testing.T, nodes ...string) *certSet {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	argv := []string{serverBin(), "certs", "--out", dir}
	for _, n := range nodes {
		argv = append(argv, "--node", n)
	}
	if out, code := runCommand(t, argv...); code != 0 {
		t.Fatalf("%q exited %d:\n%s", argv, code, out)
	}
	cs := &certSet{dir: dir}
	ca := cs.pair(t, "ca")
	leaf, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	cs.caCert, cs.caKey = leaf, ca.PrivateKey.(crypto.Signer)
	return cs
}

func (c *certSet) path(name string) string { return filepath.Join(c.dir, name) }
func (c *certSet) ca() string              { return c.path("ca.crt") }

// pair loads NAME.crt and NAME.key ("client", "agent-node-a").
func (c *certSet) pair(t *testing.T, name string) tls.Certificate {
	t.Helper()
	p, err := tls.LoadX509KeyPair(c.path(name+".crt"), c.path(name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (c *certSet) agentPair(t *testing.T, node string) tls.Certificate {
	return c.pair(t, "agent-"+node)
}

// roots is a pool holding the CA.
func (c *certSet) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.caCert)
	return p
}

// clientTLS is a TLS 1.3 client configuration that trusts the CA and
// presents cert (none if cert is nil).
func (c *certSet) clientTLS(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: c.roots(), MinVersion: tls.VersionTLS13, ServerName: "127.0.0.1"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// certIssuer says who signs a minted certificate.
type certIssuer int

const (
	byOurCA     certIssuer = iota // the CA the server trusts
	byForeignCA                   // a CA the server has never seen
	selfSigned
)

// certSpec describes a certificate to mint.
type certSpec struct {
	cn        string
	dns       []string
	ips       []string
	eku       []x509.ExtKeyUsage // nil: client auth
	notBefore time.Time          // zero: an hour ago
	notAfter  time.Time          // zero: in a day
	issuer    certIssuer
}

var serial = big.NewInt(1000)
var serialMu sync.Mutex

func nextSerial() *big.Int {
	serialMu.Lock()
	defer serialMu.Unlock()
	serial = new(big.Int).Add(serial, big.NewInt(1))
	return serial
}

// mint returns a key pair as spec describes.
func (c *certSet) mint(t *testing.T, spec certSpec) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: spec.cn},
		NotBefore:             spec.notBefore,
		NotAfter:              spec.notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           spec.eku,
		BasicConstraintsValid: true,
		DNSNames:              spec.dns,
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if tmpl.ExtKeyUsage == nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, ip := range spec.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	parent, signer := c.caCert, c.caKey
	switch spec.issuer {
	case selfSigned:
		parent, signer = tmpl, key
	case byForeignCA:
		parent, signer = foreignCA(t)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// foreignCA returns a fresh CA that the server does not trust, with the
// same name as the real one.
func foreignCA(t *testing.T) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: "tunnel-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

// ---------------------------------------------------------------------------
// Processes.

// logBuffer collects a process's output (e2e/internal/proctest).
type logBuffer = proctest.LogBuffer

// tail returns the last n lines of s, saying how many it left out.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) <= n {
		return s
	}
	return fmt.Sprintf("[%d earlier lines left out]\n%s", len(lines)-n, strings.Join(lines[len(lines)-n:], ""))
}

// proc is a running child process whose output is captured.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *logBuffer
	done chan struct{}
	err  error
}

// logLines is how much of a process's output a failed test shows.
const logLines = 15

// startProc starts argv. Cleanup kills it (SIGKILL), reaps it, and logs the
// tail of its output if the test failed.
func startProc(t *testing.T, name string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: &logBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 2 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			p.report(t, argv)
		}
	})
	return p
}

// logDir keeps the whole output of the processes of failed tests.
var logDir = filepath.Join(os.TempDir(), "tunnel-attack-logs")

var msgRE = regexp.MustCompile(`msg=("(?:[^"\\]|\\.)*"|\S+)`)

// report logs, for a failed test, how often the process logged each
// message, the tail of its output, and where the whole output is kept.
func (p *proc) report(t *testing.T, argv []string) {
	out := p.out.String()
	counts := map[string]int{}
	var order []string
	for _, line := range strings.Split(out, "\n") {
		if m := msgRE.FindStringSubmatch(line); m != nil {
			if counts[m[1]] == 0 {
				order = append(order, m[1])
			}
			counts[m[1]]++
		}
	}
	var sum strings.Builder
	for _, m := range order {
		fmt.Fprintf(&sum, "  %6d × msg=%s\n", counts[m], m)
	}
	where := "(not saved)"
	if err := os.MkdirAll(logDir, 0o755); err == nil {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name() + "-" + p.name)
		path := filepath.Join(logDir, fmt.Sprintf("%s-%d.log", name, p.cmd.Process.Pid))
		if os.WriteFile(path, []byte(strings.Join(argv, " ")+"\n"+out), 0o644) == nil {
			where = path
		}
	}
	t.Logf("--- %s (pid %d), whole output in %s; messages:\n%slast lines:\n%s",
		p.name, p.cmd.Process.Pid, where, sum.String(), tail(out, logLines))
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL unless the process is gone, and reaps it.
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

// waitLog polls the output until re matches and returns the submatches.
func (p *proc) waitLog(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		if p.exited() {
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

// eventually polls cond until it holds; after timeout it fails the test
// with cond's last message. It returns how long it took.
func eventually(t *testing.T, timeout time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, msg := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("not true within %s: %s", timeout, msg)
		}
		time.Sleep(pollInterval)
	}
}

// within polls cond until it holds or timeout passes, and returns how long
// it took and whether it held; for assertions that report, not stop.
func within(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(pollInterval)
	}
}

// ---------------------------------------------------------------------------
// tunnel-server and tunnel-agent.

// serverOpts configures startServer. Zero durations take the harness's
// defaults, which are shorter than the binary's so attacks end quickly.
type serverOpts struct {
	frontend         bool          // also the TCP+mTLS frontend, CA = the agents' CA
	allowedNames     []string      // --frontend-allowed-names
	dialTimeout      time.Duration // default 5s
	handshakeTimeout time.Duration // default 3s
	headerTimeout    time.Duration // default 2s
	extra            []string
}

// server is a running tunnel-server and its addresses.
type server struct {
	*proc
	certs        *certSet
	agentAddr    string
	udsPath      string
	frontendAddr string
	adminAddr    string
}

var listeningRE = regexp.MustCompile(`(?m)^.*msg=listening .*$`)

func orDefault(d, def time.Duration) string {
	if d == 0 {
		d = def
	}
	return d.String()
}

// startServer runs tunnel-server on loopback ports the kernel picks and
// waits until it listens and its /livez answers (its /readyz waits for an
// agent: startAgent).
func startServer(t *testing.T, cs *certSet, o serverOpts) *server {
	t.Helper()
	s := &server{certs: cs, udsPath: socketPath(t)}
	args := []string{serverBin(),
		"--agent-listen-address", "127.0.0.1:0",
		"--tls-cert-file", cs.path("server.crt"),
		"--tls-private-key-file", cs.path("server.key"),
		"--agent-ca-file", cs.ca(),
		"--uds-path", s.udsPath,
		"--admin-listen-address", "127.0.0.1:0",
		"--enable-profiling", // /debug/pprof/heap?gc=1 forces a GC before a memory reading
		"--dial-timeout", orDefault(o.dialTimeout, 5*time.Second),
		"--handshake-timeout", orDefault(o.handshakeTimeout, 3*time.Second),
		"--connect-header-timeout", orDefault(o.headerTimeout, 2*time.Second),
	}
	want := []string{"agent", "admin", "uds"}
	if o.frontend {
		args = append(args, "--frontend-listen-address", "127.0.0.1:0", "--frontend-ca-file", cs.ca())
		for _, n := range o.allowedNames {
			args = append(args, "--frontend-allowed-names", n)
		}
		want = append(want, "frontend")
	}
	args = append(args, o.extra...)
	s.proc = startProc(t, "tunnel-server", args...)
	var addrs map[string]string
	eventually(t, startTimeout, func() (bool, string) {
		if s.exited() {
			t.Fatalf("tunnel-server exited (%v) before listening:\n%s", s.err, s.out.String())
		}
		addrs = map[string]string{}
		for _, line := range listeningRE.FindAllString(s.out.String(), -1) {
			addrs[logValue(line, "listener")] = logValue(line, "addr")
		}
		for _, l := range want {
			if addrs[l] == "" {
				return false, "tunnel-server logged no listener=" + l
			}
		}
		return true, ""
	})
	s.agentAddr, s.frontendAddr, s.adminAddr = addrs["agent"], addrs["frontend"], addrs["admin"]
	eventually(t, startTimeout, func() (bool, string) {
		code, body, err := httpGet(s.adminAddr, "/livez")
		return err == nil && code == 200, fmt.Sprintf("/livez: %d %q %v", code, body, err)
	})
	return s
}

// logValue returns the value of key in a slog text line (e2e/internal/proctest).
var logValue = proctest.LogValue

// socketPath returns a short unix socket path (e2e/internal/proctest).
func socketPath(t *testing.T) string { return proctest.SocketPath(t) }

// agentOpts configures startAgent.
type agentOpts struct {
	node  string
	ips   []string
	extra []string
}

// agent is a running tunnel-agent and its admin address.
type agent struct {
	*proc
	adminAddr string
}

var (
	registeredRE = regexp.MustCompile(`msg=registered .*node=(\S+)`)
	agentAdminRE = regexp.MustCompile(`msg=listening listener=admin addr=(\S+)`)
)

// startAgent runs tunnel-agent for o.node with that node's certificate and
// waits until it registers and both its /readyz and the server's answer 200.
func startAgent(t *testing.T, s *server, o agentOpts) *agent {
	t.Helper()
	argv := []string{agentBin(),
		"--server-address", s.agentAddr,
		"--ca-file", s.certs.ca(),
		"--tls-cert-file", s.certs.path("agent-" + o.node + ".crt"),
		"--tls-private-key-file", s.certs.path("agent-" + o.node + ".key"),
		"--node-name", o.node,
		"--admin-listen-address", "127.0.0.1:0",
		"--enable-profiling",
		"--reconnect-max-backoff", "2s",
	}
	for _, ip := range o.ips {
		argv = append(argv, "--node-ip", ip)
	}
	argv = append(argv, o.extra...)
	a := &agent{proc: startProc(t, "tunnel-agent "+o.node, argv...)}
	if m := a.waitLog(t, registeredRE, startTimeout); m[1] != o.node {
		t.Fatalf("agent registered as %q, want %q", m[1], o.node)
	}
	a.adminAddr = a.waitLog(t, agentAdminRE, startTimeout)[1]
	for _, addr := range []string{a.adminAddr, s.adminAddr} {
		eventually(t, startTimeout, func() (bool, string) {
			code, body, err := httpGet(addr, "/readyz?verbose")
			return err == nil && code == 200, fmt.Sprintf("%s/readyz: %d %q %v", addr, code, body, err)
		})
	}
	return a
}

// ---------------------------------------------------------------------------
// Admin listeners: metrics, forced GC, resource baselines.

var adminClient = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true}, // hold no connection (fd) on the server
}

func httpGet(addr, path string) (int, string, error) {
	res, err := adminClient.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res.StatusCode, string(body), err
}

// metrics is one scrape: metric name → samples.
type metrics map[string][]sample

type sample struct {
	labels map[string]string
	value  float64
}

var (
	sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)`)
	labelRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// scrape reads addr's /metrics.
func scrape(addr string) (metrics, error) {
	code, body, err := httpGet(addr, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("/metrics: status %d", code)
	}
	m := metrics{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := sampleRE.FindStringSubmatch(line)
		if f == nil {
			return nil, fmt.Errorf("/metrics: cannot read %q", line)
		}
		v, err := strconv.ParseFloat(f[3], 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics: %q: %v", line, err)
		}
		labels := map[string]string{}
		for _, l := range labelRE.FindAllStringSubmatch(f[2], -1) {
			labels[l[1]] = l[2]
		}
		m[f[1]] = append(m[f[1]], sample{labels, v})
	}
	return m, sc.Err()
}

// mustScrape scrapes addr or fails the test.
func mustScrape(t *testing.T, addr string) metrics {
	t.Helper()
	m, err := scrape(addr)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return m
}

// get returns the sum of name's samples whose labels match the
// name, value pairs given (0 if there are none).
func (m metrics) get(name string, labels ...string) float64 {
	var v float64
next:
	for _, s := range m[name] {
		for i := 0; i+1 < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		v += s.value
	}
	return v
}

// counterGrowth lists how much each series of a counter, by label, grew
// from before to after ("none" if nothing did).
func counterGrowth(before, after metrics, name, label string) string {
	var parts []string
	for _, s := range after[name] {
		v := s.labels[label]
		if d := s.value - before.get(name, label, v); d != 0 {
			parts = append(parts, fmt.Sprintf("%s=%s +%.0f", label, v, d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// metric scrapes addr and returns name{labels}; -1 if the scrape failed.
func metric(addr, name string, labels ...string) float64 {
	m, err := scrape(addr)
	if err != nil {
		return -1
	}
	return m.get(name, labels...)
}

// usage is what a process holds, from its /metrics.
type usage struct {
	goroutines float64
	fds        float64
	heap       float64 // go_memstats_heap_inuse_bytes
	stack      float64 // go_memstats_stack_inuse_bytes
	rss        float64 // process_resident_memory_bytes
}

func (u usage) String() string {
	return fmt.Sprintf("goroutines %.0f, open fds %.0f, heap in use %.1f MiB, stacks %.1f MiB, RSS %.1f MiB",
		u.goroutines, u.fds, u.heap/(1<<20), u.stack/(1<<20), u.rss/(1<<20))
}

// readUsage reads addr's usage; with gc, after forcing a garbage
// collection through /debug/pprof/heap?gc=1 (the harness starts servers
// with --enable-profiling), so that heap in use is live memory only.
func readUsage(addr string, gc bool) (usage, error) {
	if gc {
		code, _, err := httpGet(addr, "/debug/pprof/heap?gc=1")
		if err != nil {
			return usage{}, err
		}
		if code != 200 {
			return usage{}, fmt.Errorf("/debug/pprof/heap: status %d (no --enable-profiling?)", code)
		}
	}
	m, err := scrape(addr)
	if err != nil {
		return usage{}, err
	}
	return usage{
		goroutines: m.get("go_goroutines"),
		fds:        m.get("process_open_fds"),
		heap:       m.get("go_memstats_heap_inuse_bytes"),
		stack:      m.get("go_memstats_stack_inuse_bytes"),
		rss:        m.get("process_resident_memory_bytes"),
	}, nil
}

// Slack allowed over the baseline once an attack is over.
const (
	slackGoroutines = 8
	slackFDs        = 4
	slackHeap       = 8 << 20  // live heap after a forced GC
	slackStack      = 4 << 20  // goroutine stacks
	slackRSS        = 96 << 20 // resident memory: freed pages go back to the OS lazily
)

// baseline waits for addr's usage to stop moving (at least three readings,
// after a forced GC, the last two with the same goroutines and fds) and
// returns it, with the fewest goroutines and fds any reading saw: a
// reading can count the admin connection of the request before it, still
// closing on a loaded machine (one fd, two goroutines), and two readings in
// a row can both count one.
func baseline(t *testing.T, addr string) usage {
	t.Helper()
	var prev, cur usage
	var err error
	least := usage{goroutines: math.Inf(1), fds: math.Inf(1)}
	readings := 0
	deadline := time.Now().Add(10 * time.Second)
	for {
		if cur, err = readUsage(addr, true); err != nil {
			t.Fatalf("baseline of %s: %v", addr, err)
		}
		least.goroutines, least.fds = min(least.goroutines, cur.goroutines), min(least.fds, cur.fds)
		readings++
		if readings >= 3 && cur.goroutines == prev.goroutines && cur.fds == prev.fds || time.Now().After(deadline) {
			cur.goroutines, cur.fds = least.goroutines, least.fds
			t.Logf("baseline: %s", cur)
			return cur
		}
		prev = cur
		time.Sleep(300 * time.Millisecond)
	}
}

// overBase reports why u is over base plus slack, or "".
func (u usage) overBase(base usage) string {
	var over []string
	if u.goroutines > base.goroutines+slackGoroutines {
		over = append(over, fmt.Sprintf("goroutines %.0f > %.0f+%d", u.goroutines, base.goroutines, slackGoroutines))
	}
	if u.fds > base.fds+slackFDs {
		over = append(over, fmt.Sprintf("open fds %.0f > %.0f+%d", u.fds, base.fds, slackFDs))
	}
	if u.heap > base.heap+slackHeap {
		over = append(over, fmt.Sprintf("heap in use %.1f MiB > %.1f+%d MiB", u.heap/(1<<20), base.heap/(1<<20), slackHeap>>20))
	}
	if u.stack > base.stack+slackStack {
		over = append(over, fmt.Sprintf("stacks %.1f MiB > %.1f+%d MiB", u.stack/(1<<20), base.stack/(1<<20), slackStack>>20))
	}
	if u.rss > base.rss+slackRSS {
		over = append(over, fmt.Sprintf("RSS %.1f MiB > %.1f+%d MiB", u.rss/(1<<20), base.rss/(1<<20), slackRSS>>20))
	}
	return strings.Join(over, "; ")
}

// expectBaseline polls addr (forcing a GC each time) until its usage is
// back within slack of base, and fails the test (without stopping it) if
// it is not within settleTimeout.
func expectBaseline(t *testing.T, who, addr string, base usage) {
	t.Helper()
	start := time.Now()
	var last usage
	var why string
	for {
		u, err := readUsage(addr, true)
		if err != nil {
			why = err.Error()
		} else if last, why = u, u.overBase(base); why == "" {
			t.Logf("%s back at baseline after %s: %s", who, time.Since(start).Round(time.Millisecond), u)
			return
		}
		if time.Since(start) > settleTimeout {
			t.Errorf("%s not back at baseline %s after the attack: %s\n  baseline: %s\n  now:      %s",
				who, settleTimeout, why, base, last)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// peakSampler records the highest usage of a process while an attack runs.
type peakSampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak usage
	n    int // readings taken
	errs int // readings failed
}

// samplePeaks reads addr's usage every 100ms until stop.
func samplePeaks(addr string) *peakSampler {
	p := &peakSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			u, err := readUsage(addr, false)
			p.mu.Lock()
			if err != nil {
				p.errs++
			} else {
				p.n++
				p.peak = usage{
					goroutines: max(p.peak.goroutines, u.goroutines), fds: max(p.peak.fds, u.fds),
					heap: max(p.peak.heap, u.heap), stack: max(p.peak.stack, u.stack), rss: max(p.peak.rss, u.rss),
				}
			}
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return p
}

// finish stops sampling and returns the peaks.
func (p *peakSampler) finish(t *testing.T) usage {
	t.Helper()
	close(p.stop)
	<-p.done
	t.Logf("peaks over %d readings (%d failed): %s", p.n, p.errs, p.peak)
	return p.peak
}

// percentile returns the p-th percentile (0-100) of ds by nearest rank:
// the smallest value at least p% of ds are at or below (with fewer than
// 100 values, p99 is the maximum).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}
