package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The --local mode: real tunnel-server and tunnel-agent processes on
// loopback, with the CONNECT frontend on a unix socket, and the target as a
// child process of its own (tunnel-bench target), so that with 10,000 idle
// tunnels no process needs more than one descriptor per tunnel.

// localNode is the agent's node; its certificate proves 127.0.0.1, so a
// CONNECT to the target's loopback address routes to it.
const (
	localNode   = "bench-node"
	localNodeIP = "127.0.0.1"
)

// startTimeout bounds building, certificate generation and each start-up.
const (
	buildTimeout = 5 * time.Minute
	startTimeout = 30 * time.Second
)

// modulePath is the module whose binaries --local builds.
const modulePath = "github.com/tunnel-project/tunnel"

var (
	agentListenLine = regexp.MustCompile(`msg="?listening"? .*\blistener=agent\b.*\baddr=(\S+)`)
	udsListenLine   = regexp.MustCompile(`msg="?listening"? .*\blistener=uds\b`)
	agentReadyLine  = regexp.MustCompile(`msg="?registered"?`)
	adminListenLine = regexp.MustCompile(`msg="?listening"? .*\blistener=admin\b.*\baddr=(\S+)`)
	targetLine      = regexp.MustCompile(`^listening addr=(\S+)`)
)

// localRun owns the temporary directory and the processes of --local.
type localRun struct {
	dir       string
	bin       string
	pki       string // directory of tunnel-server certs output
	sock      string
	target    *child
	targetAdr string
	server    *child
	agent     *child
	agentAddr string // the server's agent port
	// serverAdmin and agentAdmin are the admin listeners, for /metrics.
	serverAdmin, agentAdmin string
	probe                   *probeRun // nil with --probe=false
}

// startLocal builds (unless bin is given), generates certificates and
// starts the target, the server and the agent, and with probe the probe's
// two processes.
func startLocal(ctx context.Context, bin string, probe bool, say func(string, ...any)) (_ *localRun, err error) {
	dir, err := os.MkdirTemp("", "tunnel-bench-")
	if err != nil {
		return nil, err
	}
	l := &localRun{dir: dir, bin: bin, pki: filepath.Join(dir, "pki"), sock: filepath.Join(dir, "connect.sock")}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	if l.bin == "" {
		say("building tunnel-server and tunnel-agent")
		if l.bin, err = build(ctx, dir); err != nil {
			return nil, err
		}
	}
	if err := l.runCerts(ctx); err != nil {
		return nil, err
	}
	if err := l.startTarget(ctx); err != nil {
		return nil, err
	}
	if probe {
		if err := l.startProbe(ctx); err != nil {
			return nil, err
		}
	}
	return l, l.startTunnel(ctx)
}

// moduleRoot finds the directory of the tunnel module from the working
// directory.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the tunnel module: run from its checkout, or pass --bin")
	}
	b, err := os.ReadFile(gomod)
	if err != nil || !strings.Contains(string(b), "module "+modulePath+"\n") {
		return "", fmt.Errorf("%s is not the %s module: run from its checkout, or pass --bin", gomod, modulePath)
	}
	return filepath.Dir(gomod), nil
}

// build compiles both binaries into dir/bin.
func build(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	out := filepath.Join(dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out+string(filepath.Separator), "./cmd/tunnel-server", "./cmd/tunnel-agent")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build in %s: %w\n%s", root, err, b)
	}
	return out, nil
}

func (l *localRun) runCerts(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(l.bin, "tunnel-server"), "certs",
		"--out", l.pki, "--node", localNode+"="+localNodeIP)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tunnel-server certs: %w\n%s", err, b)
	}
	return nil
}

// startTarget runs this very binary as "tunnel-bench target".
func (l *localRun) startTarget(ctx context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this executable to run the target: %w", err)
	}
	if l.target, err = startChild("target", self, "target", "--listen", "127.0.0.1:0"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	m, err := l.target.waitLine(ctx, targetLine)
	if err != nil {
		return err
	}
	l.targetAdr = m[1]
	return nil
}

// startTunnel starts tunnel-server and tunnel-agent and waits until the
// agent is registered.
func (l *localRun) startTunnel(ctx context.Context) (err error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	defer func() {
		if err != nil {
			l.stopTunnel()
		}
	}()
	if l.server, err = startChild("tunnel-server", filepath.Join(l.bin, "tunnel-server"), append(benchFlags[:len(benchFlags):len(benchFlags)],
		"--agent-listen-address", "127.0.0.1:0", "--uds-path", l.sock,
		"--max-streams-per-agent", "65536", "--session-window-budget", "64Gi", "--max-agents", "1000000", "--max-pending-dials", "65536",
		"--tls-cert-file", l.file("server.crt"), "--tls-private-key-file", l.file("server.key"),
		"--agent-ca-file", l.file("ca.crt"), "--log-level", "info")...); err != nil {
		return err
	}
	m, err := l.server.waitLine(ctx, agentListenLine)
	if err != nil {
		return err
	}
	if l.agentAddr, err = unquote(m[1]); err != nil {
		return err
	}
	if _, err := l.server.waitLine(ctx, udsListenLine); err != nil {
		return err
	}
	if l.serverAdmin, err = adminAddr(ctx, l.server); err != nil {
		return err
	}
	if l.agent, err = startChild("tunnel-agent", filepath.Join(l.bin, "tunnel-agent"), append(benchFlags[:len(benchFlags):len(benchFlags)],
		"--server-address", l.agentAddr, "--server-name", "localhost", "--ca-file", l.file("ca.crt"),
		"--tls-cert-file", l.file("agent-"+localNode+".crt"), "--tls-private-key-file", l.file("agent-"+localNode+".key"),
		"--node-name", localNode, "--node-ip", localNodeIP, "--log-level", "info")...); err != nil {
		return err
	}
	if l.agentAdmin, err = adminAddr(ctx, l.agent); err != nil {
		return err
	}
	_, err = l.agent.waitLine(ctx, agentReadyLine)
	return err
}

// adminAddr waits for c's admin listener and returns its address.
func adminAddr(ctx context.Context, c *child) (string, error) {
	m, err := c.waitLine(ctx, adminListenLine)
	if err != nil {
		return "", err
	}
	return unquote(m[1])
}

// benchFlags go to both binaries: the admin listener on a port of its own
// (its fixed default port would clash between runs), where the idle test
// reads go_goroutines, and a short drain, so that restarts between tests
// do not wait for tunnels a test left closing.
//
// The server's own flags above lift its limits (README "Limits") so that
// --idle tunnels through the one agent and --fleet agents measure the
// tunnel, not the bounds; the stream window stays at its default 1 MiB
// (64 GiB / 65,536 streams).
var benchFlags = []string{"--admin-listen-address=127.0.0.1:0", "--drain-timeout=100ms"}

func unquote(s string) (string, error) {
	if !strings.HasPrefix(s, `"`) {
		return s, nil
	}
	return strconv.Unquote(s)
}

func (l *localRun) file(name string) string { return filepath.Join(l.pki, name) }

// restart replaces the server and agent with fresh processes, so that one
// test's memory and state do not carry into the next.
func (l *localRun) restart(ctx context.Context) error {
	if err := l.stopTunnel(); err != nil {
		return err
	}
	return l.startTunnel(ctx)
}

// alive reports an error if a process of the run has exited.
func (l *localRun) alive() error {
	cs := []*child{l.server, l.agent, l.target}
	if l.probe != nil {
		cs = append(cs, l.probe.server, l.probe.agent)
	}
	for _, c := range cs {
		if c == nil {
			continue
		}
		if done, err := c.exited(); done {
			return fmt.Errorf("%s exited during the run (%v); its last output:\n%s", c.name, err, c.log.tail(20))
		}
	}
	return nil
}

func (l *localRun) stopTunnel() error {
	var errs []error
	for _, c := range []**child{&l.agent, &l.server} {
		if *c != nil {
			errs = append(errs, (*c).stop())
			*c = nil
		}
	}
	return errors.Join(errs...)
}

// close stops everything and removes the temporary directory.
func (l *localRun) close() error {
	err := errors.Join(l.stopTunnel(), l.stopProbe())
	if l.target != nil {
		err = errors.Join(err, l.target.stop())
	}
	os.RemoveAll(l.dir)
	return err
}
