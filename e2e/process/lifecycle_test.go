//go:build linux

package process

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Lifecycle with real processes and real signals: drain on SIGTERM at both
// ends, and certificate rotation under a running pair.

// drainBound is how long a drained process may take to exit once its last
// tunnel has closed.
const drainBound = 5 * time.Second

// TestServerDrainsOnSIGTERM: after SIGTERM the server reports not ready,
// answers new CONNECTs with 503 and the reason, keeps the open tunnel
// working, and exits 0 once it closes.
func TestServerDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	srv, _ := startNodeA(t, serverOpts{extra: []string{"--drain-timeout", "1m"}})
	echo := startTarget(t, nodeAIP, serveEcho)
	dial := udsDialer(srv.udsPath)
	c := mustConnect(t, dial, echo)

	srv.signal(t, syscall.SIGTERM)
	srv.waitLog(t, regexp.MustCompile(`msg="draining: new CONNECTs get 503"`), startTimeout)
	if code, _ := httpGet(t, srv.adminAddr, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: %d, want 503", code)
	}
	_, status := connectStatus(t, dial, echo)
	if statusCode(status) != 503 || !strings.Contains(status, "draining") {
		t.Errorf("CONNECT while draining: %q, want 503 server draining", status)
	}
	checkEcho(t, c, 1<<20)
	if srv.exited() {
		t.Fatal("tunnel-server exited with a tunnel still open")
	}
	c.Close()
	start := time.Now()
	if code := srv.waitExit(t, drainBound); code != 0 {
		t.Fatalf("tunnel-server exited %d after draining, want 0", code)
	}
	t.Logf("tunnel-server exited %s after its last tunnel closed", time.Since(start).Round(time.Millisecond))
}

// TestAgentDrainsOnSIGTERM: after SIGTERM the agent, still the only one
// for its node, carries new dials as well as its open tunnel (no 502 in the
// moment before a replacement registers), and exits 0 once they close.
func TestAgentDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	srv := startServer(t, loopbackCerts(t), serverOpts{})
	agent := startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{nodeAIP}, extra: []string{"--drain-timeout", "1m"}})
	echo := startTarget(t, nodeAIP, serveEcho)
	dial := udsDialer(srv.udsPath)
	c := mustConnect(t, dial, echo)

	sent := time.Now()
	agent.signal(t, syscall.SIGTERM)
	srv.waitLog(t, regexp.MustCompile(`msg="agent draining" node=node-a`), startTimeout)
	t.Logf("server saw node-a's agent draining %s after SIGTERM to it", time.Since(sent).Round(time.Millisecond))
	during := mustConnect(t, dial, echo)
	checkEcho(t, c, 1<<20)
	checkEcho(t, during, 1<<20)
	if agent.exited() {
		t.Fatal("tunnel-agent exited with a tunnel still open")
	}
	c.Close()
	during.Close()
	start := time.Now()
	if code := agent.waitExit(t, drainBound); code != 0 {
		t.Fatalf("tunnel-agent exited %d after draining, want 0", code)
	}
	t.Logf("tunnel-agent exited %s after its last tunnel closed", time.Since(start).Round(time.Millisecond))
}

// TestCertificateRotation replaces every certificate, key and CA bundle
// under a running pair with those of a new CA: the open tunnel survives,
// new connections get the new material (a client of the new CA gets in, one
// of the old CA does not, an agent of the new CA registers), and a broken
// file is logged and ignored.
func TestCertificateRotation(t *testing.T) {
	t.Parallel()
	old := loopbackCerts(t)
	srv := startServer(t, old, serverOpts{frontend: true})
	agent := startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{nodeAIP}})
	echo := startTarget(t, nodeAIP, serveEcho)
	c := mustConnect(t, udsDialer(srv.udsPath), echo)
	oldClient := srv.certs.clientTLS(t, true)

	fresh := loopbackCerts(t)
	freshClient := fresh.clientTLS(t, true)
	broken := filepath.Join(t.TempDir(), "broken.crt")
	if err := os.WriteFile(broken, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, broken, old.path("server.crt"))
	srv.signal(t, syscall.SIGHUP)
	srv.waitLog(t, regexp.MustCompile(`msg="certificate reload failed; keeping the material in use"`), startTimeout)
	checkEcho(t, mustConnect(t, tlsDialer(srv.frontendAddr, oldClient), echo), 1024)

	entries, err := os.ReadDir(fresh.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		replaceFile(t, fresh.path(e.Name()), old.path(e.Name()))
	}
	srv.signal(t, syscall.SIGHUP)
	agent.signal(t, syscall.SIGHUP)
	reloaded := regexp.MustCompile(`msg="certificate material reloaded"`)
	srv.waitLog(t, reloaded, startTimeout)
	agent.waitLog(t, reloaded, startTimeout)

	checkEcho(t, c, 1<<20) // the tunnel opened before the rotation
	checkEcho(t, mustConnect(t, tlsDialer(srv.frontendAddr, freshClient), echo), 1024)
	expectTLSRefused(t, srv.frontendAddr, oldClient, echo)
	startAgent(t, srv, agentOpts{node: nodeB, nodeIPs: []string{nodeBIP}}) // presents the new CA's certificate
}

// replaceFile copies src over dst by rename, as tools that rotate
// certificates do.
func replaceFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// TestAgentHandsTunnelsOnRestart restarts an agent as a rollout does —
// SIGTERM to the old process, a new one started beside it with the same
// --handoff-socket — while tunnels through the unix-socket and the mTLS TCP
// frontends are open: the old agent hands them over and exits at once,
// and the same connections go on through the new agent.
func TestAgentHandsTunnelsOnRestart(t *testing.T) {
	t.Parallel()
	srv := startServer(t, loopbackCerts(t), serverOpts{frontend: true})
	opts := agentOpts{node: nodeA, nodeIPs: []string{nodeAIP},
		extra: []string{"--drain-timeout", "1m", "--drain-idle", "1m", "--handoff-socket", filepath.Join(t.TempDir(), "handoff.sock")}}
	old := startAgent(t, srv, opts)
	echo := startTarget(t, nodeAIP, serveEcho)
	viaUDS := mustConnect(t, udsDialer(srv.udsPath), echo)
	viaTLS := mustConnect(t, tlsDialer(srv.frontendAddr, srv.certs.clientTLS(t, true)), echo)
	checkEcho(t, viaUDS, 1<<20)
	checkEcho(t, viaTLS, 1<<20)

	sent := time.Now()
	old.signal(t, syscall.SIGTERM)
	srv.waitLog(t, regexp.MustCompile(`msg="agent draining" node=node-a`), startTimeout)
	startAgent(t, srv, opts)
	if code := old.waitExit(t, drainBound); code != 0 {
		t.Fatalf("old tunnel-agent exited %d, want 0", code)
	}
	t.Logf("old tunnel-agent exited %s after SIGTERM, its tunnels handed over", time.Since(sent).Round(time.Millisecond))
	checkEcho(t, viaUDS, 1<<20)
	checkEcho(t, viaTLS, 1<<20)
}
