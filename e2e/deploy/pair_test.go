package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/e2e/internal/proctest"
)

// A tunnel-server and a tunnel-agent started from one directory of
// binaries (the unpacked image, a release archive, TestMain's build) over
// loopback, with certificates the server binary writes: enough to carry a
// CONNECT to a local echo target and to scrape both /metrics. The thorough
// process tests are in ../process; this only shows that shipped binaries
// work and what they export.

const (
	startTimeout = 30 * time.Second // a process logging its listeners, an agent registering
	ioTimeout    = 10 * time.Second
	nodeName     = "node-a"
)

// logBuffer collects a process's output (e2e/internal/proctest).
type logBuffer = proctest.LogBuffer

// startLogged starts argv; cleanup kills and reaps it and, if the test
// failed, logs its output.
func startLogged(t *testing.T, argv ...string) *logBuffer {
	t.Helper()
	out := &logBuffer{}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", argv, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("--- %s output:\n%s", filepath.Base(argv[0]), out)
		}
	})
	return out
}

// listeningRE matches a binary's log line for each listener it opens.
var listeningRE = regexp.MustCompile(`msg=listening listener=(\S+) addr=(\S+)`)

// waitListeners waits for the named listeners in out and returns their
// addresses.
func waitListeners(t *testing.T, what string, out *logBuffer, names ...string) map[string]string {
	t.Helper()
	addrs := map[string]string{}
	waitFor(t, what+" listening on "+strings.Join(names, ", "), func() bool {
		for _, m := range listeningRE.FindAllStringSubmatch(out.String(), -1) {
			addrs[m[1]] = m[2]
		}
		for _, n := range names {
			if addrs[n] == "" {
				return false
			}
		}
		return true
	})
	return addrs
}

// waitFor polls cond for up to startTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(startTimeout); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, startTimeout)
		}
	}
}

// pair is a running server and agent.
type pair struct {
	uds                     string // the server's HTTP CONNECT socket
	serverAdmin, agentAdmin string
}

// startPair runs dir's tunnel-server and tunnel-agent and waits until the
// agent has registered (the server's /readyz wants one agent).
func startPair(t *testing.T, dir string) *pair {
	t.Helper()
	pki := t.TempDir()
	bin := func(name string) string { return filepath.Join(dir, name) }
	if out, code := run(t, bin(serverName), "certs", "--out", pki, "--node", nodeName+"=127.0.0.1"); code != 0 {
		t.Fatalf("%s certs: exit %d\n%s", serverName, code, out)
	}
	p := &pair{uds: filepath.Join(t.TempDir(), "tunnel.sock")}
	srv := startLogged(t, bin(serverName),
		"--agent-listen-address=127.0.0.1:0", "--admin-listen-address=127.0.0.1:0", "--uds-path="+p.uds,
		"--tls-cert-file="+filepath.Join(pki, "server.crt"), "--tls-private-key-file="+filepath.Join(pki, "server.key"),
		"--agent-ca-file="+filepath.Join(pki, "ca.crt"))
	addrs := waitListeners(t, serverName, srv, "agent", "admin", "uds")
	p.serverAdmin = addrs["admin"]
	agent := startLogged(t, bin(agentName),
		"--server-address="+addrs["agent"], "--admin-listen-address=127.0.0.1:0",
		"--ca-file="+filepath.Join(pki, "ca.crt"), "--node-name="+nodeName, "--node-ip=127.0.0.1",
		"--tls-cert-file="+filepath.Join(pki, "agent-"+nodeName+".crt"),
		"--tls-private-key-file="+filepath.Join(pki, "agent-"+nodeName+".key"))
	p.agentAdmin = waitListeners(t, agentName, agent, "admin")["admin"]
	waitFor(t, "agent registered (server /readyz 200)", func() bool {
		res, err := http.Get("http://" + p.serverAdmin + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return p
}

// connectEcho sends one CONNECT through the tunnel to an echo target on
// 127.0.0.1, as kube-apiserver would to a kubelet, and checks the echo.
func (p *pair) connectEcho(t *testing.T) {
	t.Helper()
	target := echoTarget(t)
	c, err := net.DialTimeout("unix", p.uds, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: %s", target, res.Status)
	}
	msg := []byte("through the shipped binaries\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the tunnel: %q, %v", got, err)
	}
}

// echoTarget listens on 127.0.0.1 and echoes each connection until the
// test ends.
func echoTarget(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// samples maps each sample name on a /metrics page to the label sets of its
// samples, written as in the text format ({a="b",...}).
type samples map[string][]string

var sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? `)

// scrape adds the samples on http://addr/metrics to s.
func (s samples) scrape(t *testing.T, addr string) {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if m := sampleRE.FindStringSubmatch(sc.Text()); m != nil {
			s[m[1]] = append(s[m[1]], m[2])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

// scrapeBoth returns the server's and the agent's samples together.
func (p *pair) scrapeBoth(t *testing.T) samples {
	s := samples{}
	s.scrape(t, p.serverAdmin)
	s.scrape(t, p.agentAdmin)
	return s
}

// checkVersion requires `BINARY --version` in dir to report version, and
// both binaries' tunnel_build_info in s to carry it.
func checkVersion(t *testing.T, dir, version string, s samples) {
	t.Helper()
	for _, b := range []string{serverName, agentName} {
		out, code := run(t, filepath.Join(dir, b), "--version")
		if want := b + " version " + version + ","; code != 0 || !strings.HasPrefix(out, want) {
			t.Errorf("%s --version: exit %d, %q; want it to start %q", b, code, out, want)
		}
	}
	want := fmt.Sprintf(`version="%s"`, version)
	n := 0
	for _, l := range s["tunnel_build_info"] {
		if strings.Contains(l, want) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("tunnel_build_info %v: want %s from both binaries", s["tunnel_build_info"], want)
	}
}
