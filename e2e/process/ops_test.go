//go:build linux

package process

// Operations of the real binaries: the admin listener's /metrics and health
// endpoints after real traffic, --version, and keepalive against a peer
// whose network goes silent.

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// httpGet fetches http://addr+path and returns the status code and body.
func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: connectTimeout}
	res, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	return res.StatusCode, string(body)
}

// scrape fetches addr's /metrics (series and its parser are in
// dashboard_test.go).
func scrape(t *testing.T, addr string) series {
	t.Helper()
	s := series{}
	s.scrape(t, addr)
	return s
}

// seriesValue returns the value of name{labels...} (name, value pairs).
func seriesValue(s series, name string, labels ...string) (float64, bool) {
next:
	for _, smp := range s[name] {
		for i := 0; i+1 < len(labels); i += 2 {
			if smp.labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return smp.value, true
	}
	return 0, false
}

// want is one expected series: name{labels} op value.
type seriesWant struct {
	name   string
	labels []string
	op     string // "==" or ">="
	value  float64
}

func (w seriesWant) String() string {
	return fmt.Sprintf("%s%v %s %v", w.name, w.labels, w.op, w.value)
}

func (w seriesWant) holds(s series) (bool, string) {
	v, ok := seriesValue(s, w.name, w.labels...)
	switch {
	case !ok:
		return false, "no series " + w.String()
	case w.op == "==" && v == w.value, w.op == ">=" && v >= w.value:
		return true, ""
	}
	return false, fmt.Sprintf("%s%v is %v, want %s %v", w.name, w.labels, v, w.op, w.value)
}

// expectSeries scrapes addr until every series in ws holds (counters of the
// copy path move just after the client sees the bytes) and returns the last
// scrape.
func expectSeries(t *testing.T, who, addr string, ws []seriesWant) series {
	t.Helper()
	var ss series
	eventually(t, startTimeout, func() (bool, string) {
		ss = scrape(t, addr)
		for _, w := range ws {
			if ok, msg := w.holds(ss); !ok {
				return false, who + ": " + msg
			}
		}
		return true, ""
	})
	return ss
}

// TestMetricsAfterTraffic sends a verified 1 MiB echo, a CONNECT to a node
// without an agent and a refused dial through real processes, then scrapes
// both binaries' /metrics and checks every series, and their health
// endpoints.
func TestMetricsAfterTraffic(t *testing.T) {
	t.Parallel()
	fast := []string{"--keepalive-interval", "200ms"} // so keepalive RTTs are recorded
	srv := startServer(t, loopbackCerts(t), serverOpts{extra: fast})
	agent := startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{nodeAIP}, extra: fast})
	agentAdmin := agent.waitLog(t, adminAddrRE, startTimeout)[1]

	const n = 1 << 20
	dial := udsDialer(srv.udsPath)
	c := mustConnect(t, dial, startTarget(t, nodeAIP, serveEcho))
	checkEcho(t, c, n)
	c.Close()
	if _, status := connectStatus(t, dial, noNode+":10250"); statusCode(status) != 502 {
		t.Fatalf("CONNECT to a node without an agent: %q, want 502", status)
	}
	if _, status := connectStatus(t, dial, closedPort(t, nodeAIP)); !strings.Contains(status, "refused") {
		t.Fatalf("CONNECT to a closed port: %q, want 502 ... refused", status)
	}

	build := []seriesWant{{"tunnel_build_info", nil, "==", 1}, {"go_goroutines", nil, ">=", 1}, {"process_resident_memory_bytes", nil, ">=", 1}}
	srvSeries := expectSeries(t, "tunnel-server", srv.adminAddr, append([]seriesWant{
		{"tunnel_server_agents_connected", nil, "==", 1},
		{"tunnel_server_agent_registrations_total", nil, "==", 1},
		{"tunnel_server_agent_rejections_total", []string{"reason", "identity"}, "==", 0},
		{"tunnel_server_streams_open", nil, "==", 0},
		{"tunnel_server_dials_total", []string{"result", "ok"}, "==", 1},
		{"tunnel_server_dials_total", []string{"result", "no_agent"}, "==", 1},
		{"tunnel_server_dials_total", []string{"result", "refused"}, "==", 1},
		{"tunnel_server_dials_total", []string{"result", "timeout"}, "==", 0},
		{"tunnel_server_dial_duration_seconds_count", []string{"stage", "proxy"}, "==", 2},
		{"tunnel_server_dial_duration_seconds_count", []string{"stage", "connect"}, "==", 2},
		{"tunnel_server_dial_duration_seconds_bucket", []string{"stage", "connect", "le", "+Inf"}, "==", 2},
		{"tunnel_server_bytes_total", []string{"direction", "to_node"}, ">=", n},
		{"tunnel_server_bytes_total", []string{"direction", "from_node"}, ">=", n},
		{"tunnel_server_frontend_requests_total", []string{"code", "200"}, "==", 1},
		{"tunnel_server_frontend_requests_total", []string{"code", "502"}, "==", 2},
		{"tunnel_server_keepalive_rtt_seconds_count", nil, ">=", 1},
	}, build...))
	agentSeries := expectSeries(t, "tunnel-agent", agentAdmin, append([]seriesWant{
		{"tunnel_agent_registered", nil, "==", 1},
		{"tunnel_agent_streams_open", nil, "==", 0},
		{"tunnel_agent_dials_total", []string{"result", "ok"}, "==", 1},
		{"tunnel_agent_dials_total", []string{"result", "refused"}, "==", 1},
		{"tunnel_agent_dial_duration_seconds_count", nil, "==", 2},
		{"tunnel_agent_bytes_total", []string{"direction", "to_node"}, ">=", n},
		{"tunnel_agent_bytes_total", []string{"direction", "from_node"}, ">=", n},
		{"tunnel_agent_reconnects_total", nil, "==", 0},
		{"tunnel_agent_keepalive_rtt_seconds_count", nil, ">=", 1},
	}, build...))

	// No series names a node: a cluster's worth of nodes would multiply them.
	for who, ss := range map[string]series{"tunnel-server": srvSeries, "tunnel-agent": agentSeries} {
		for name, samples := range ss {
			for _, smp := range samples {
				for k, v := range smp.labels {
					if v == nodeA || v == nodeAIP {
						t.Errorf("%s: series %s has a per-node label %s=%q", who, name, k, v)
					}
				}
			}
		}
	}

	for _, ep := range []struct{ who, addr string }{{"tunnel-server", srv.adminAddr}, {"tunnel-agent", agentAdmin}} {
		for _, path := range []string{"/healthz", "/livez", "/readyz"} {
			if code, body := httpGet(t, ep.addr, path); code != 200 || body != "ok" {
				t.Errorf("%s GET %s: %d %q, want 200 ok", ep.who, path, code, body)
			}
		}
		if code, _ := httpGet(t, ep.addr, "/debug/pprof/"); code != http.StatusNotFound {
			t.Errorf("%s serves pprof without --enable-profiling: %d", ep.who, code)
		}
	}
	if _, body := httpGet(t, srv.adminAddr, "/readyz?verbose"); body != "[+]listeners ok\n[+]agents ok\n[+]not-draining ok\nreadyz check passed\n" {
		t.Errorf("tunnel-server /readyz?verbose: %q", body)
	}
	if _, body := httpGet(t, agentAdmin, "/readyz?verbose"); body != "[+]registered ok\nreadyz check passed\n" {
		t.Errorf("tunnel-agent /readyz?verbose: %q", body)
	}
}

// TestReadyzWithoutAgents: a server with no agent is live but not ready,
// and says why; with --enable-profiling it serves pprof.
func TestReadyzWithoutAgents(t *testing.T) {
	t.Parallel()
	srv := startServer(t, loopbackCerts(t), serverOpts{extra: []string{"--enable-profiling"}})
	if code, body := httpGet(t, srv.adminAddr, "/readyz"); code != 503 || !strings.Contains(body, "[-]agents failed: 0 of at least 1 agents registered") {
		t.Errorf("GET /readyz with no agent: %d %q, want 503 naming the agents check", code, body)
	}
	if code, body := httpGet(t, srv.adminAddr, "/livez"); code != 200 {
		t.Errorf("GET /livez: %d %q", code, body)
	}
	if code, body := httpGet(t, srv.adminAddr, "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("GET /debug/pprof/ with --enable-profiling: %d", code)
	}
	v, _ := seriesValue(scrape(t, srv.adminAddr), "tunnel_server_agents_connected")
	if v != 0 {
		t.Errorf("tunnel_server_agents_connected = %v with no agent", v)
	}
}

// TestVersionFlag: both binaries print their build on --version and exit 0.
func TestVersionFlag(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(`^tunnel-(server|agent) version \S+, commit \S+, go\S+\n$`)
	for _, bin := range []string{serverBin(), agentBin()} {
		out, code := runCommand(t, nil, bin, "--version")
		if code != 0 || !re.MatchString(out) {
			t.Errorf("%s --version: exit %d, %q", bin, code, out)
		}
	}
}

// ---------------------------------------------------------------------------
// Keepalive.

// silentRelay forwards TCP to a fixed address. silence makes every
// connection it carries so far go quiet both ways without closing a socket:
// to either end it looks like a network that drops every packet. Later
// connections are forwarded normally.
type silentRelay struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	silent chan struct{}
	wg     sync.WaitGroup
}

func startSilentRelay(t *testing.T, to string) *silentRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &silentRelay{ln: ln, silent: make(chan struct{})}
	r.wg.Add(1)
	go r.acceptLoop(to)
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *silentRelay) acceptLoop(to string) {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", to)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, c, up)
		silent := r.silent
		r.mu.Unlock()
		r.wg.Add(2)
		go r.forward(up, c, silent)
		go r.forward(c, up, silent)
	}
}

// forward copies src to dst until either fails or silent is closed, after
// which it neither reads nor writes and leaves both sockets open.
func (r *silentRelay) forward(dst, src net.Conn, silent chan struct{}) {
	defer r.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-silent:
			return
		default:
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (r *silentRelay) silence() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.silent)
	r.silent = make(chan struct{})
}

// Keepalive settings of the keepalive tests, and the slack allowed on top of
// interval + timeout for process scheduling and log polling. Without
// keepalive a silent peer lasts as long as the kernel's TCP retries:
// minutes.
const (
	kaInterval = time.Second
	kaTimeout  = time.Second
	kaSlack    = 3 * time.Second
)

var (
	kaFlags        = []string{"--keepalive-interval", kaInterval.String(), "--keepalive-timeout", kaTimeout.String()}
	disconnectedRE = regexp.MustCompile(`msg="agent disconnected"`)
	kaFailedRE     = regexp.MustCompile(`msg="keepalive failed; closing session"`)
)

// detection is a log line that shows a process noticed the dead peer.
type detection struct {
	p  *proc
	re *regexp.Regexp
}

// waitDetected polls every process in ds for its line, all within the
// keepalive bound counted from start, and returns how long after start each
// was first seen.
func waitDetected(t *testing.T, start time.Time, ds ...detection) []time.Duration {
	t.Helper()
	bound := kaInterval + kaTimeout + kaSlack
	took := make([]time.Duration, len(ds))
	for left := len(ds); left > 0; time.Sleep(pollInterval) {
		now := time.Since(start)
		for i, d := range ds {
			if took[i] == 0 && d.re.MatchString(d.p.out.String()) {
				took[i], left = now, left-1
			}
		}
		if left > 0 && now > bound {
			for i, d := range ds {
				if took[i] == 0 {
					t.Errorf("%s did not log %q within %s (interval %s + timeout %s + slack %s) of the network going silent",
						d.p.name, d.re, bound, kaInterval, kaTimeout, kaSlack)
				}
			}
			t.FailNow()
		}
	}
	return took
}

// TestKeepaliveDetectsSilentNetwork runs the agent's connection through a
// relay that goes silent without closing anything. Both ends notice within
// interval + timeout: the server drops the agent (its routes go, the open
// tunnel ends), the agent gives the session up and registers again over a
// new connection.
func TestKeepaliveDetectsSilentNetwork(t *testing.T) {
	t.Parallel()
	srv := startServer(t, loopbackCerts(t), serverOpts{extra: kaFlags})
	relay := startSilentRelay(t, srv.agentAddr)
	viaRelay := *srv
	viaRelay.agentAddr = relay.ln.Addr().String()
	agent := startAgent(t, &viaRelay, agentOpts{node: nodeA, nodeIPs: []string{nodeAIP},
		extra: append([]string{"--reconnect-min-backoff", "100ms", "--reconnect-max-backoff", "200ms"}, kaFlags...)})
	dial := udsDialer(srv.udsPath)
	echo := startTarget(t, nodeAIP, serveEcho)
	c := mustConnect(t, dial, echo)
	checkEcho(t, c, 64<<10)

	start := time.Now()
	relay.silence()
	took := waitDetected(t, start, detection{srv.proc, disconnectedRE}, detection{agent, kaFailedRE})
	t.Logf("dead-peer detection with --keepalive-interval %s --keepalive-timeout %s: server dropped the agent after %s, agent gave the session up after %s",
		kaInterval, kaTimeout, took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	expectClosed(t, c, closeBound)

	agent.waitLog(t, regexp.MustCompile(`(?s)msg=registered.*msg=registered`), startTimeout)
	checkEcho(t, mustConnect(t, dial, echo), 64<<10)
}

// TestNetnsKeepaliveDetectsDeadLink puts the server and the agent in network
// namespaces joined by a veth pair and takes the server's end of the link
// down: packets vanish, nobody sends a FIN or a reset, and both processes'
// sockets stay open. Both ends must notice within interval + timeout, the
// open tunnel must end, and once the link is back the agent registers again.
func TestNetnsKeepaliveDetectsDeadLink(t *testing.T) {
	needNetns(t)
	n := newNetnsTopology(os.Getpid())
	n.setup(t)
	targetAddr := startNetnsHelper(t, n, "echo")

	cs := newCerts(t, []string{n.srvIP.String()}, nodeA+"="+n.targetIP.String())
	srv := startServer(t, cs, serverOpts{listenHost: n.srvIP.String(), wrap: inNS(n.srvNS), extra: kaFlags})
	agent := startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{n.targetIP.String()}, wrap: inNS(n.nodeNS),
		extra: append([]string{"--reconnect-min-backoff", "100ms", "--reconnect-max-backoff", "500ms", "--handshake-timeout", "2s"}, kaFlags...)})
	dial := udsDialer(srv.udsPath)
	c := mustConnect(t, dial, targetAddr)
	checkEcho(t, c, 64<<10)

	start := time.Now()
	mustRun(t, append(inNS(n.srvNS), "ip", "link", "set", n.srvVeth, "down")...)
	took := waitDetected(t, start, detection{srv.proc, disconnectedRE}, detection{agent, kaFailedRE})
	t.Logf("dead link, --keepalive-interval %s --keepalive-timeout %s: server dropped the agent after %s, agent gave the session up after %s",
		kaInterval, kaTimeout, took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	expectClosed(t, c, closeBound)
	if _, status := connectStatus(t, dial, targetAddr); !strings.Contains(status, "no agent") {
		t.Fatalf("CONNECT after the agent was dropped: %q, want 502 no agent", status)
	}

	mustRun(t, append(inNS(n.srvNS), "ip", "link", "set", n.srvVeth, "up")...)
	agent.waitLog(t, regexp.MustCompile(`(?s)msg=registered.*msg=registered`), 2*startTimeout)
	checkEcho(t, mustConnect(t, dial, targetAddr), 64<<10)
}
