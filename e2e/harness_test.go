package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// Bounds of the harness's waits.
const (
	certsTimeout   = 30 * time.Second // tunnel-server certs
	startTimeout   = 20 * time.Second // a listener line, the agent's registration
	readyTimeout   = 20 * time.Second // the first CONNECT that reaches the target
	probeTimeout   = 2 * time.Second  // one readiness probe
	probeInterval  = 50 * time.Millisecond
	nodeName       = "node-a"
	nodeIP         = "127.0.0.1"
	absentNodeIP   = "127.0.0.2" // an address no agent may serve
	absentNodeName = "node-b"    // a node that has no agent
)

// regexpRegistered matches the agent's line once the server accepted its session.
var regexpRegistered = regexp.MustCompile(`msg="?registered"? .*\bnode=` + nodeName + `\b`)

// tunnel is a running tunnel-server with one registered tunnel-agent.
type tunnel struct {
	dir          string // certificates and the unix socket
	udsPath      string // the CONNECT frontend on a unix socket
	grpcUDSPath  string // the gRPC frontend on a unix socket
	frontendAddr string // the CONNECT frontend on TCP + mTLS
	agentAddr    string // the agents' port
	server       *process
	agent        *process
}

// certFile returns the path of a file written by `tunnel-server certs`.
func (tn *tunnel) certFile(name string) string { return filepath.Join(tn.dir, name) }

// startTunnel generates certificates, starts tunnel-server and tunnel-agent
// for node-a, and returns once a CONNECT over the unix socket reaches echo.
func startTunnel(t *testing.T, echoAddr string) *tunnel {
	t.Helper()
	// A short directory of our own: unix socket paths are limited to ~100 bytes.
	dir, err := os.MkdirTemp("", "tunnel-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tn := &tunnel{dir: dir, udsPath: filepath.Join(dir, "s.sock"), grpcUDSPath: filepath.Join(dir, "g.sock")}
	tn.generateCerts(t)
	tn.startServer(t)
	tn.startAgent(t)
	tn.waitReady(t, echoAddr)
	return tn
}

// generateCerts runs the quick-start certificate generator.
func (tn *tunnel) generateCerts(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), certsTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, serverBin, "certs", "--out", tn.dir, "--node", nodeName+"="+nodeIP)
	cmd.WaitDelay = stopTimeout
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	for _, f := range []string{"ca.crt", "server.crt", "server.key", "client.crt", "client.key",
		"agent-" + nodeName + ".crt", "agent-" + nodeName + ".key"} {
		if _, err := os.Stat(tn.certFile(f)); err != nil {
			t.Fatalf("tunnel-server certs did not write %s: %v", f, err)
		}
	}
}

// startServer starts tunnel-server on loopback ports chosen by the kernel and
// learns them from its start-up log.
func (tn *tunnel) startServer(t *testing.T) {
	t.Helper()
	tn.server = startProcess(t, "tunnel-server", serverBin,
		"--agent-listen-address", "127.0.0.1:0",
		"--uds-path", tn.udsPath,
		"--grpc-uds-path", tn.grpcUDSPath,
		"--frontend-listen-address", "127.0.0.1:0",
		"--tls-cert-file", tn.certFile("server.crt"),
		"--tls-private-key-file", tn.certFile("server.key"),
		"--agent-ca-file", tn.certFile("ca.crt"),
		"--frontend-ca-file", tn.certFile("ca.crt"),
		"--admin-listen-address", "127.0.0.1:0",
		"--log-format", "text",
		"--log-level", "debug",
	)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var err error
	if tn.agentAddr, err = tn.server.listenAddr(ctx, "agent"); err != nil {
		t.Fatal(err)
	}
	if tn.frontendAddr, err = tn.server.listenAddr(ctx, "frontend"); err != nil {
		t.Fatal(err)
	}
	udsAddr, err := tn.server.listenAddr(ctx, "uds")
	if err != nil {
		t.Fatal(err)
	}
	if udsAddr != tn.udsPath {
		t.Errorf("uds listener logged addr=%s, want %s", udsAddr, tn.udsPath)
	}
	grpcAddr, err := tn.server.listenAddr(ctx, "grpc-uds")
	if err != nil {
		t.Fatal(err)
	}
	if grpcAddr != tn.grpcUDSPath {
		t.Errorf("grpc-uds listener logged addr=%s, want %s", grpcAddr, tn.grpcUDSPath)
	}
	t.Logf("tunnel-server: agent=%s frontend=%s uds=%s grpc-uds=%s", tn.agentAddr, tn.frontendAddr, udsAddr, grpcAddr)
}

// startAgent starts tunnel-agent for node-a and waits for its registration.
func (tn *tunnel) startAgent(t *testing.T) {
	t.Helper()
	tn.agent = startProcess(t, "tunnel-agent", agentBin,
		"--server-address", tn.agentAddr,
		"--server-name", "localhost",
		"--ca-file", tn.certFile("ca.crt"),
		"--tls-cert-file", tn.certFile("agent-"+nodeName+".crt"),
		"--tls-private-key-file", tn.certFile("agent-"+nodeName+".key"),
		"--node-name", nodeName,
		"--node-ip", nodeIP,
		"--admin-listen-address", "127.0.0.1:0",
		"--log-level", "debug",
	)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if _, err := tn.agent.waitLine(ctx, regexpRegistered); err != nil {
		t.Fatal(err)
	}
}

// waitReady polls CONNECTs over the unix socket until one reaches echoAddr
// and echoes a probe, within readyTimeout.
func (tn *tunnel) waitReady(t *testing.T, echoAddr string) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var last error
	for attempt := 1; ; attempt++ {
		if last = probeConnect(tn.udsPath, echoAddr); last == nil {
			t.Logf("tunnel ready after %d CONNECT probe(s)", attempt)
			return
		}
		for _, p := range []*process{tn.server, tn.agent} {
			if done, err := p.exited(); done {
				t.Fatalf("%s exited (%v) while waiting for the tunnel; last probe: %v", p.name, err, last)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CONNECT reached %s within %v; last probe: %v", echoAddr, readyTimeout, last)
		}
		time.Sleep(probeInterval)
	}
}

// probeConnect sends one raw CONNECT, byte for byte what the egress selector
// sends, and checks that the tunnel echoes a probe.
func probeConnect(udsPath, addr string) error {
	c, err := net.DialTimeout("unix", udsPath, probeTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", addr); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("reading CONNECT response: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("CONNECT %s: %s", addr, res.Status)
	}
	const probe = "ready?"
	if _, err := io.WriteString(c, probe); err != nil {
		return err
	}
	got := make([]byte, len(probe))
	if _, err := io.ReadFull(br, got); err != nil {
		return fmt.Errorf("echo through tunnel: %w", err)
	}
	if string(got) != probe {
		return fmt.Errorf("echo through tunnel: got %q, want %q", got, probe)
	}
	return nil
}
