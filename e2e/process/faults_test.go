//go:build linux

package process

// Faults across a real network: tunnel-server and tunnel-agent in separate
// network namespaces (netns_test.go), a process killed mid-transfer, and
// the server restarted under its agents. impair_test.go adds a lossy, slow
// and partitioned link.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needNetns skips t unless it can create network namespaces.
func needNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces need root (run go test as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: the ip command (iproute2) is not installed")
	}
}

// startNetnsHelper runs the test binary as a target helper ("echo" or
// "bulk") on n's target address inside the node namespace, and returns the
// address it listens on.
func startNetnsHelper(t *testing.T, n netnsTopology, role string) string {
	t.Helper()
	p := startProc(t, role+" target in "+n.nodeNS, helperEnv(role, net.JoinHostPort(n.targetIP.String(), "0")),
		append(inNS(n.nodeNS), testBinary(t))...)
	return p.waitLog(t, helperListeningRE, startTimeout)[1]
}

// TestNetnsAgentKilledMidTransfer is TestAgentKilledMidTransferEndsConnection
// across a veth pair: the agent dies (SIGKILL) in its namespace while a
// download streams through it; the bytes received before are verified, the
// frontend connection ends promptly, and the node then has no agent.
func TestNetnsAgentKilledMidTransfer(t *testing.T) {
	needNetns(t)
	n := newNetnsTopology(os.Getpid())
	n.setup(t)
	bulk := startNetnsHelper(t, n, "bulk")
	cs := newCerts(t, []string{n.srvIP.String()}, nodeA+"="+n.targetIP.String())
	srv := startServer(t, cs, serverOpts{listenHost: n.srvIP.String(), wrap: inNS(n.srvNS)})
	agent := startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{n.targetIP.String()}, wrap: inNS(n.nodeNS)})
	dial := udsDialer(srv.udsPath)
	c := mustConnect(t, dial, bulk)

	const before = 8 << 20
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(bulkHeader(bulkDownload, 1<<40)); err != nil {
		t.Fatal(err)
	}
	got, want := sha256.New(), sha256.New()
	io.CopyN(want, pattern(1<<40), before)
	if n, err := io.CopyN(got, c, before); err != nil {
		t.Fatalf("read %d bytes before the kill: %v", n, err)
	}
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatalf("the %d bytes received before the kill differ from the pattern", before)
	}
	agent.signal(t, syscall.SIGKILL)
	took := expectClosed(t, c, closeBound)
	t.Logf("frontend connection ended %s after SIGKILL of the agent in %s (%d MiB verified before)",
		took.Round(time.Millisecond), n.nodeNS, before>>20)
	eventually(t, closeBound, func() (bool, string) {
		_, status := connectStatus(t, dial, bulk)
		return statusCode(status) == 502 && strings.Contains(status, "no agent for"), "CONNECT " + bulk + " got " + status
	})
}

// restartAgents is how many agents TestNetnsServerRestart runs.
const restartAgents = 5

// restartBound is how long agents with the default reconnect backoff
// (500ms doubling, jittered) may take to register again after the server
// is back: the server is down for well under a second, so an agent has
// waited at most about 0.5 + 1 + 2 s by then.
const restartBound = 8 * time.Second

// TestNetnsServerRestart kills tunnel-server (SIGKILL) under five agents in
// another namespace and starts it again on the same address. Every agent
// must register again within restartBound with its default backoff, at
// times spread by the backoff's jitter rather than all at once, and carry a
// verified transfer afterwards. The reconnect times are logged.
func TestNetnsServerRestart(t *testing.T) {
	needNetns(t)
	n := newNetnsTopology(os.Getpid())
	n.setup(t)
	echo := startNetnsHelper(t, n, "echo")
	_, port, _ := net.SplitHostPort(echo)
	var specs, names []string
	for i := range restartAgents {
		names = append(names, fmt.Sprintf("node-%d", i))
		specs = append(specs, names[i]+"="+n.targetIP.String())
	}
	cs := newCerts(t, []string{n.srvIP.String()}, specs...)
	srv := startServer(t, cs, serverOpts{listenHost: n.srvIP.String(), wrap: inNS(n.srvNS)})
	var agents []*proc
	for _, name := range names {
		agents = append(agents, startAgent(t, srv, agentOpts{node: name, nodeIPs: []string{n.targetIP.String()}, wrap: inNS(n.nodeNS)}))
	}
	for _, name := range names {
		checkEcho(t, mustConnect(t, udsDialer(srv.udsPath), net.JoinHostPort(name, port)), 256<<10)
	}

	killed := time.Now()
	srv.signal(t, syscall.SIGKILL)
	srv.waitExit(t, stopTimeout)
	srv2 := startServer(t, cs, serverOpts{listenHost: n.srvIP.String(), agentAddr: srv.agentAddr, wrap: inNS(n.srvNS)})
	up := logTime(t, listeningLine(t, srv2.out.String(), "agent"))
	t.Logf("server killed, and listening again on %s %s later", srv2.agentAddr, up.Sub(killed).Round(time.Millisecond))

	var back []time.Duration
	for i, a := range agents {
		m := a.waitLog(t, regexp.MustCompile(`(?s)msg=registered.*(time=\S+ level=\S+ msg=registered [^\n]*)`), restartBound)
		at := logTime(t, m[1])
		back = append(back, at.Sub(up))
		t.Logf("%s registered again %s after the server came back (%s after the kill)",
			names[i], at.Sub(up).Round(time.Millisecond), at.Sub(killed).Round(time.Millisecond))
		if at.Sub(up) > restartBound {
			t.Errorf("%s took %s to register again, more than %s", names[i], at.Sub(up), restartBound)
		}
	}
	slices.Sort(back)
	t.Logf("reconnect times after the restart: min %s, median %s, max %s", back[0].Round(time.Millisecond),
		back[len(back)/2].Round(time.Millisecond), back[len(back)-1].Round(time.Millisecond))
	if back[len(back)-1]-back[0] < 5*time.Millisecond {
		t.Errorf("all %d agents came back within 5ms of each other (%v): the reconnect backoff has no jitter", len(back), back)
	}
	for _, name := range names {
		checkEcho(t, mustConnect(t, udsDialer(srv2.udsPath), net.JoinHostPort(name, port)), 1<<20)
	}
}

// listeningLine returns the server's "msg=listening listener=NAME" line.
func listeningLine(t *testing.T, out, name string) string {
	t.Helper()
	for _, line := range listeningRE.FindAllString(out, -1) {
		if logValue(line, "listener") == name {
			return line
		}
	}
	t.Fatalf("no listener=%s line in:\n%s", name, out)
	return ""
}

// logTime returns the time= value of a slog text line.
func logTime(t *testing.T, line string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, logValue(line, "time"))
	if err != nil {
		t.Fatal(errors.Join(fmt.Errorf("log line %q", line), err))
	}
	return at
}
