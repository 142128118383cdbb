//go:build linux

package process

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Loopback nodes: Linux routes all of 127.0.0.0/8 to lo, so each node gets
// an address of its own and targets bind to it.
const (
	nodeA   = "node-a"
	nodeAIP = "127.0.0.2"
	nodeB   = "node-b"
	nodeBIP = "127.0.0.3"
	noNode  = "127.0.0.9" // no agent serves it
)

// Bounds on how fast failures must surface.
const (
	closeBound = 5 * time.Second // a dead hop ends the frontend connection
	exitBound  = 10 * time.Second
)

// loopbackCerts generates certificates for node-a and node-b.
func loopbackCerts(t *testing.T) *certSet {
	return newCerts(t, nil, nodeA+"="+nodeAIP, nodeB+"="+nodeBIP)
}

// startNodeA runs a server with o and a registered agent for node-a.
func startNodeA(t *testing.T, o serverOpts) (*server, *proc) {
	t.Helper()
	srv := startServer(t, loopbackCerts(t), o)
	agent := startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{nodeAIP}})
	return srv, agent
}

// withHost returns name:port, port taken from addr.
func withHost(name, addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return net.JoinHostPort(name, port)
}

// checkReachesNode proves dial reaches node-a's echo and bulk targets by node
// IP and by node name, bytes verified by SHA-256.
func checkReachesNode(t *testing.T, dial dialer) {
	echo := startTarget(t, nodeAIP, serveEcho)
	bulk := startTarget(t, nodeAIP, serveBulk)
	for _, host := range []string{nodeAIP, nodeA} {
		t.Run("via "+host, func(t *testing.T) {
			t.Run("echo 1MiB", func(t *testing.T) {
				checkEcho(t, mustConnect(t, dial, withHost(host, echo)), 1<<20)
			})
			t.Run("echo 1MiB then half-close", func(t *testing.T) {
				checkHalfClose(t, mustConnect(t, dial, withHost(host, echo)), 1<<20)
			})
			t.Run("download 8MiB", func(t *testing.T) {
				checkDownload(t, mustConnect(t, dial, withHost(host, bulk)), 8<<20)
			})
			t.Run("upload 8MiB", func(t *testing.T) {
				checkUpload(t, mustConnect(t, dial, withHost(host, bulk)), 8<<20)
			})
		})
	}
}

// (a) CONNECT over the unix socket reaches a target on the node.
func TestUDSConnectReachesNode(t *testing.T) {
	t.Parallel()
	srv, _ := startNodeA(t, serverOpts{})
	checkReachesNode(t, udsDialer(srv.udsPath))
}

// (b) The same over TCP+mTLS; clients without a certificate of the frontend
// CA are refused.
func TestFrontendMTLS(t *testing.T) {
	t.Parallel()
	srv, _ := startNodeA(t, serverOpts{frontend: true})
	checkReachesNode(t, tlsDialer(srv.frontendAddr, srv.certs.clientTLS(t, true)))

	echo := startTarget(t, nodeAIP, serveEcho)
	foreign := newCerts(t, nil) // another CA, with its own client certificate
	refused := []struct {
		name string
		cfg  func(t *testing.T) *tls.Config
	}{
		{"no client certificate", func(t *testing.T) *tls.Config { return srv.certs.clientTLS(t, false) }},
		{"client certificate of another CA", func(t *testing.T) *tls.Config {
			cfg := foreign.clientTLS(t, true)
			cfg.RootCAs = srv.certs.clientTLS(t, false).RootCAs
			return cfg
		}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			expectTLSRefused(t, srv.frontendAddr, tc.cfg(t), withHost(nodeAIP, echo))
		})
	}
}

// expectTLSRefused requires the frontend to fail the handshake or the first
// read of a client with cfg, without ever answering its CONNECT.
func expectTLSRefused(t *testing.T, addr string, cfg *tls.Config, dest string) {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: connectTimeout}, Config: cfg}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Logf("refused at handshake: %v", err)
		return
	}
	defer c.Close()
	_, status, err := request(c, connectRequest(dest))
	if err == nil {
		t.Fatalf("frontend answered %q to a client it must refuse", status)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("frontend neither refused nor answered within %s: %v", connectTimeout, err)
	}
	t.Logf("refused: %v", err)
}

// (c) Failures from real processes come back as honest statuses, and the
// connection is closed after them.
func TestConnectFailureStatuses(t *testing.T) {
	t.Parallel()
	srv, _ := startNodeA(t, serverOpts{})
	dial := udsDialer(srv.udsPath)
	cases := []struct {
		name    string
		req     string
		code    func(int) bool
		want    string // in the status line
		wantDoc string
	}{
		{"no agent for IP", connectRequest(noNode + ":10250"), is(502), "no agent for " + noNode, "502"},
		{"no agent for name", connectRequest("node-z:10250"), is(502), "no agent for node-z", "502"},
		{"connection refused", connectRequest(closedPort(t, nodeAIP)), is(502), "connection refused", "502"},
		{"GET", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", is4xx, "", "4xx"},
		{"POST with CONNECT-style target", "POST " + nodeAIP + ":10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", is4xx, "", "4xx"},
		{"garbage", "HELLO\r\n\r\n", is4xx, "", "4xx"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, status, err := request(dial(t), tc.req)
			if err != nil {
				t.Fatalf("sent %q: %v", tc.req, err)
			}
			if !tc.code(statusCode(status)) || !strings.Contains(status, tc.want) {
				t.Fatalf("sent %q, got status line %q, want %s containing %q", tc.req, status, tc.wantDoc, tc.want)
			}
			t.Logf("%q -> %q", tc.req, status)
			expectClosed(t, c, closeBound)
		})
	}
}

func is(code int) func(int) bool { return func(c int) bool { return c == code } }
func is4xx(c int) bool           { return c >= 400 && c < 500 }

// rejectionRE matches a server line about rejecting an agent.
var rejectionRE = regexp.MustCompile(`(?im)^.*reject.*$`)

// logHasValue reports whether a slog text line in out has a reason= or err=
// value containing want.
func logHasValue(out, want string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(logValue(line, "reason"), want) || strings.Contains(logValue(line, "err"), want) {
			return true
		}
	}
	return false
}

// (d) An agent whose --node-name is not proven by its certificate does not
// register, and it logs the server's reason.
func TestAgentWithUnprovenNodeNameIsRejected(t *testing.T) {
	t.Parallel()
	srv := startServer(t, loopbackCerts(t), serverOpts{})
	agent := startProc(t, "tunnel-agent (node-a cert, --node-name node-b)", nil,
		agentArgv(srv, agentOpts{node: nodeB, certNode: nodeA, nodeIPs: []string{nodeBIP}})...)

	line := srv.waitLog(t, rejectionRE, startTimeout)[0]
	reason := logValue(line, "reason")
	if reason == "" {
		reason = logValue(line, "err")
	}
	if reason == "" {
		t.Fatalf("server rejection line has no reason= or err=: %q", line)
	}
	t.Logf("server: %s", line)
	eventually(t, startTimeout, func() (bool, string) {
		return logHasValue(agent.out.String(), reason), "the agent logged no line with the server's reason " + strconv.Quote(reason)
	})
	if registeredRE.MatchString(agent.out.String()) {
		t.Fatalf("agent logged registration despite the rejection")
	}

	// And it attracts no traffic for node-b.
	dial := udsDialer(srv.udsPath)
	for _, dest := range []string{nodeB + ":10250", nodeBIP + ":10250"} {
		_, status := connectStatus(t, dial, dest)
		if statusCode(status) != 502 || !strings.Contains(status, "no agent for") {
			t.Errorf("CONNECT %s after the rejection: got %q, want 502 no agent for ...", dest, status)
		}
	}
}

// (e) SIGKILL of the agent mid-transfer ends the frontend connection
// promptly, and the node is then reported as having no agent.
func TestAgentKilledMidTransferEndsConnection(t *testing.T) {
	t.Parallel()
	srv, agent := startNodeA(t, serverOpts{})
	bulk := startTarget(t, nodeAIP, serveBulk)
	dial := udsDialer(srv.udsPath)
	c := mustConnect(t, dial, bulk)

	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(bulkHeader(bulkDownload, 1<<40)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.CopyN(io.Discard, c, 4<<20); err != nil {
		t.Fatalf("read %d bytes before the kill: %v", n, err)
	}
	agent.signal(t, syscall.SIGKILL)
	took := expectClosed(t, c, closeBound)
	t.Logf("frontend connection ended %s after SIGKILL of the agent", took.Round(time.Millisecond))

	eventually(t, closeBound, func() (bool, string) {
		_, status := connectStatus(t, dial, bulk)
		return statusCode(status) == 502 && strings.Contains(status, "no agent for"), "CONNECT " + bulk + " got " + status
	})
}

// (f) tunnel-agent exits 0 on SIGTERM.
func TestAgentExitsCleanlyOnSIGTERM(t *testing.T) {
	t.Parallel()
	_, agent := startNodeA(t, serverOpts{})
	agent.signal(t, syscall.SIGTERM)
	if code := agent.waitExit(t, exitBound); code != 0 {
		t.Fatalf("tunnel-agent exited %d on SIGTERM, want 0", code)
	}
}

// tunnel-server exits 0 on SIGTERM too, with an agent connected.
func TestServerExitsCleanlyOnSIGTERM(t *testing.T) {
	t.Parallel()
	srv, _ := startNodeA(t, serverOpts{frontend: true})
	srv.signal(t, syscall.SIGTERM)
	if code := srv.waitExit(t, exitBound); code != 0 {
		t.Fatalf("tunnel-server exited %d on SIGTERM, want 0", code)
	}
}

// (g) Every flag mistake gets a one-line error naming the flag (the first
// line of output: a usage dump after it would name every flag) and a
// non-zero exit, before anything starts.
func TestFlagMistakes(t *testing.T) {
	t.Parallel()
	cs := loopbackCerts(t)
	server := func(t *testing.T) map[string]string {
		return map[string]string{
			"--agent-listen-address": "127.0.0.1:0",
			"--tls-cert-file":        cs.path("server.crt"),
			"--tls-private-key-file": cs.path("server.key"),
			"--agent-ca-file":        cs.ca(),
			"--uds-path":             socketPath(t),
			"--admin-listen-address": "127.0.0.1:0",
		}
	}
	agent := func(*testing.T) map[string]string {
		return map[string]string{
			"--server-address":       "127.0.0.1:1", // never reached: every case is invalid
			"--ca-file":              cs.ca(),
			"--tls-cert-file":        cs.agentCert(nodeA),
			"--tls-private-key-file": cs.agentKey(nodeA),
			"--node-name":            nodeA,
			"--node-ip":              nodeAIP,
			"--admin-listen-address": "127.0.0.1:0",
		}
	}
	cases := []struct {
		name  string
		bin   func() string
		base  func(*testing.T) map[string]string
		drop  string   // a required flag left out
		extra []string // bad flags added (the last of a repeated flag wins)
		flag  string   // the first line of output must name it
	}{
		{"agent without --server-address", agentBin, agent, "--server-address", nil, "server-address"},
		{"agent --server-address without port", agentBin, agent, "", []string{"--server-address=127.0.0.1"}, "server-address"},
		{"agent without --ca-file", agentBin, agent, "--ca-file", nil, "ca-file"},
		{"agent --ca-file missing", agentBin, agent, "", []string{"--ca-file=/nonexistent/ca.crt"}, "ca-file"},
		{"agent without --tls-cert-file", agentBin, agent, "--tls-cert-file", nil, "tls-cert-file"},
		{"agent --node-ip=bogus", agentBin, agent, "", []string{"--node-ip=bogus"}, "node-ip"},
		{"agent --pod-cidr=10.0.0.0/99", agentBin, agent, "", []string{"--pod-cidr=10.0.0.0/99"}, "pod-cidr"},
		{"agent --max-dial-timeout=0", agentBin, agent, "", []string{"--max-dial-timeout=0"}, "max-dial-timeout"},
		{"agent --reconnect-max-backoff below min", agentBin, agent, "", []string{"--reconnect-max-backoff=1ms"}, "reconnect-max-backoff"},
		{"agent unknown flag", agentBin, agent, "", []string{"--no-such-flag=1"}, "no-such-flag"},
		{"server --dial-timeout=bogus", serverBin, server, "", []string{"--dial-timeout=bogus"}, "dial-timeout"},
		{"server --dial-timeout=-1s", serverBin, server, "", []string{"--dial-timeout=-1s"}, "dial-timeout"},
		{"server --handshake-timeout=0", serverBin, server, "", []string{"--handshake-timeout=0"}, "handshake-timeout"},
		{"server --log-format=xml", serverBin, server, "", []string{"--log-format=xml"}, "log-format"},
		{"server --log-level=loud", serverBin, server, "", []string{"--log-level=loud"}, "log-level"},
		{"server without --tls-cert-file", serverBin, server, "--tls-cert-file", nil, "tls-cert-file"},
		{"server --tls-cert-file missing", serverBin, server, "", []string{"--tls-cert-file=/nonexistent/server.crt"}, "tls-cert-file"},
		{"server without --agent-ca-file", serverBin, server, "--agent-ca-file", nil, "agent-ca-file"},
		{"server --agent-listen-address without port", serverBin, server, "", []string{"--agent-listen-address=nonsense"}, "agent-listen-address"},
		{"server --uds-path in a missing directory", serverBin, server, "", []string{"--uds-path=/nonexistent/dir/s.sock"}, "uds-path"},
		{"server --frontend-listen-address without --frontend-ca-file", serverBin, server, "",
			[]string{"--frontend-listen-address=127.0.0.1:0"}, "frontend-ca-file"},
		{"server unknown flag", serverBin, server, "", []string{"--no-such-flag=1"}, "no-such-flag"},
		{"server --admin-listen-address without port", serverBin, server, "", []string{"--admin-listen-address=nonsense"}, "admin-listen-address"},
		{"server --ready-min-agents=-1", serverBin, server, "", []string{"--ready-min-agents=-1"}, "ready-min-agents"},
		{"server --keepalive-interval=0", serverBin, server, "", []string{"--keepalive-interval=0"}, "keepalive-interval"},
		{"server --keepalive-timeout=-1s", serverBin, server, "", []string{"--keepalive-timeout=-1s"}, "keepalive-timeout"},
		{"agent --keepalive-interval=0", agentBin, agent, "", []string{"--keepalive-interval=0"}, "keepalive-interval"},
		{"agent --keepalive-timeout=0", agentBin, agent, "", []string{"--keepalive-timeout=0"}, "keepalive-timeout"},
		{"agent --admin-listen-address without port", agentBin, agent, "", []string{"--admin-listen-address=nonsense"}, "admin-listen-address"},
		{"agent --allow-cidr not a network", agentBin, agent, "", []string{"--allow-cidr=10.0.0.1/8"}, "allow-cidr"},
		{"agent --allow-port=0", agentBin, agent, "", []string{"--allow-port=0"}, "allow-port"},
		{"agent --allow-port=https", agentBin, agent, "", []string{"--allow-port=https"}, "allow-port"},
		{"server --uds-mode=999", serverBin, server, "", []string{"--uds-mode=999"}, "uds-mode"},
		{"server --uds-group unknown", serverBin, server, "", []string{"--uds-group=no-such-group-for-tunnel"}, "uds-group"},
		{"server --max-agents=0", serverBin, server, "", []string{"--max-agents=0"}, "max-agents"},
		{"server --max-streams-per-agent=0", serverBin, server, "", []string{"--max-streams-per-agent=0"}, "max-streams-per-agent"},
		{"server --max-pending-dials=-1", serverBin, server, "", []string{"--max-pending-dials=-1"}, "max-pending-dials"},
		{"server --session-window-budget=lots", serverBin, server, "", []string{"--session-window-budget=lots"}, "session-window-budget"},
		{"server --session-window-budget below the minimum", serverBin, server, "", []string{"--session-window-budget=1Mi"}, "session-window-budget"},
		{"server --replaced-drain-timeout=0", serverBin, server, "", []string{"--replaced-drain-timeout=0"}, "replaced-drain-timeout"},
		{"server --max-connect-header-bytes=10", serverBin, server, "", []string{"--max-connect-header-bytes=10"}, "max-connect-header-bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			argv := []string{tc.bin()}
			for f, v := range tc.base(t) {
				if f != tc.drop {
					argv = append(argv, f+"="+v)
				}
			}
			argv = append(argv, tc.extra...)
			out, code := runCommand(t, nil, argv...)
			if code == 0 {
				t.Fatalf("%q exited 0; output:\n%s", argv[1:], out)
			}
			first := firstLine(out)
			if !strings.Contains(first, tc.flag) {
				t.Fatalf("%q exited %d; its first line %q does not name %q; output:\n%s", argv[1:], code, first, tc.flag, out)
			}
			if strings.Contains(out, "goroutine ") || strings.Contains(out, "panic:") {
				t.Fatalf("%q crashed instead of reporting the mistake:\n%s", argv[1:], out)
			}
			t.Logf("exit %d: %s", code, first)
		})
	}
}

// firstLine returns the first non-blank line of out.
func firstLine(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) != "" {
			return line
		}
	}
	return ""
}
