package tunnel

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// policyHarness is a server that trusts agent routes, so that policyAgent
// can serve the default route: every destination reaches its policy.
func policyHarness(t *testing.T) *harness {
	return newHarness(t, func(c *ServerConfig) { c.TrustAgentRoutes = true })
}

// policyAgent starts node-a (node IP 127.0.0.1) serving the default route,
// with mod applied, its metrics on a registry of its own and a Dial hook
// that counts dials.
func policyAgent(t *testing.T, h *harness, mod func(*AgentConfig)) (*prometheus.Registry, *atomic.Int32) {
	t.Helper()
	reg := prometheus.NewRegistry()
	var dials atomic.Int32
	cfg := h.agentConfig("node-a")
	cfg.Registerer = reg
	cfg.DefaultRoute = true
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	if mod != nil {
		mod(&cfg)
	}
	t.Cleanup(h.startAgent(cfg).stop)
	return reg, &dials
}

// expectForbidden sends a CONNECT for dest and expects 403 with reason in
// the status line, and that the agent dialed nothing.
func expectForbidden(t *testing.T, h *harness, dials *atomic.Int32, dest, reason string) {
	t.Helper()
	before := dials.Load()
	_, res := h.connect(dest)
	if res.StatusCode != http.StatusForbidden || !strings.Contains(res.Status, "destination not allowed: "+dest) || !strings.Contains(res.Status, reason) {
		t.Errorf("CONNECT %s: %q, want 403 destination not allowed ... %q", dest, res.Status, reason)
	}
	if n := dials.Load() - before; n != 0 {
		t.Errorf("CONNECT %s: the agent dialed %d times", dest, n)
	}
}

// TestDestinationPolicyDefault: loopback that is not a node IP and the
// metadata address are refused with 403 and the reason, counted as
// forbidden, and never dialed; the node IP itself works.
func TestDestinationPolicyDefault(t *testing.T) {
	h := policyHarness(t)
	reg, dials := policyAgent(t, h, nil)
	ln := listenTCP(t, "127.0.0.5:0") // loopback, not a node IP
	expectForbidden(t, h, dials, ln.Addr().String(), "127.0.0.5 is a loopback address")
	expectForbidden(t, h, dials, "169.254.169.254:80", "link-local or metadata")
	expectForbidden(t, h, dials, "[::ffff:169.254.169.254]:80", "link-local or metadata")
	if err := echoCheck(h.mustConnect(startEcho(t, "127.0.0.1:0")), 1000); err != nil {
		t.Fatal(err)
	}
	expectMetric(t, reg, eq(3), "tunnel_agent_dials_total", "result", "forbidden")
	expectMetric(t, reg, eq(1), "tunnel_agent_dials_total", "result", "ok")
}

// TestDestinationPolicyAllowCIDR: --allow-cidr lets a loopback range
// through, and a name is dialed at the address that was checked; the
// metadata address stays refused.
func TestDestinationPolicyAllowCIDR(t *testing.T) {
	h := policyHarness(t)
	var dialed atomic.Value
	_, dials := policyAgent(t, h, func(c *AgentConfig) {
		c.AllowCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/24")}
		next := c.Dial
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialed.Store(addr)
			return next(ctx, network, addr)
		}
	})
	echo := startEcho(t, "127.0.0.5:0")
	if err := echoCheck(h.mustConnect(echo), 1000); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(echo)
	if got := dialed.Load(); got != echo {
		t.Errorf("dialed %v, want %s", got, echo)
	}
	expectForbidden(t, h, dials, "169.254.169.254:80", "link-local or metadata")
	expectForbidden(t, h, dials, "127.0.1.1:"+port, "127.0.1.1 is a loopback address") // outside the /24
}

// TestDestinationPolicyNames: an agent looks up no name but its node's
// unless told to; then a name is resolved on the node, and only its allowed
// addresses are dialed — by address, not by name.
func TestDestinationPolicyNames(t *testing.T) {
	h := newHarness(t, func(c *ServerConfig) { c.TrustAgentRoutes = true })
	var log dialLog
	cfg := h.agentConfig("node-c") // no node IPs
	cfg.DefaultRoute = true
	cfg.Dial = recordingDial("node-c", &log)
	closed := h.startAgent(cfg)
	echo := startEcho(t, "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(echo)
	_, res := h.connect("localhost:" + port)
	if res.StatusCode != http.StatusForbidden || !strings.Contains(res.Status, "looks up none but its node's") {
		t.Fatalf("CONNECT localhost without ResolveNames: %s, want 403 saying names are not looked up", res.Status)
	}
	closed.stop()
	waitFor(t, "the agent to leave", func() bool { return h.srv.Agents() == 0 })
	cfg.ResolveNames = true
	strict := h.startAgent(cfg)
	_, res = h.connect("localhost:" + port)
	if res.StatusCode != http.StatusForbidden || !strings.Contains(res.Status, "localhost resolves to") {
		t.Fatalf("CONNECT localhost: %s, want 403 naming what localhost resolves to", res.Status)
	}
	strict.stop()
	waitFor(t, "the strict agent to leave", func() bool { return h.srv.Agents() == 0 })
	cfg.AllowCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	h.startAgent(cfg)
	if err := echoCheck(h.mustConnect("localhost:"+port), 1000); err != nil {
		t.Fatal(err)
	}
	if got := log.get(); got != "node-c 127.0.0.1:"+port {
		t.Errorf("dialed %q, want the checked address 127.0.0.1:%s", got, port)
	}
}

// TestDestinationPolicyAllowPorts: --allow-port narrows even the node's
// own address.
func TestDestinationPolicyAllowPorts(t *testing.T) {
	h := policyHarness(t)
	echo := startEcho(t, "127.0.0.1:0")
	_, p, _ := net.SplitHostPort(echo)
	port, _ := strconv.Atoi(p)
	other := listenTCP(t, "127.0.0.1:0").Addr().String() // the node IP, another port
	reg, dials := policyAgent(t, h, func(c *AgentConfig) { c.AllowPorts = []uint16{uint16(port), 10250} })
	if err := echoCheck(h.mustConnect(echo), 1000); err != nil {
		t.Fatal(err)
	}
	_, op, _ := net.SplitHostPort(other)
	expectForbidden(t, h, dials, other, "port "+op+" is not an allowed port")
	expectMetric(t, reg, eq(1), "tunnel_agent_dials_total", "result", "forbidden")
}

// TestAgentConfigPolicyValidate: port 0 and a range that is not a network
// address are configuration errors naming their field.
func TestAgentConfigPolicyValidate(t *testing.T) {
	h := newHarness(t, nil)
	for field, mod := range map[string]func(*AgentConfig){
		"AllowPorts": func(c *AgentConfig) { c.AllowPorts = []uint16{443, 0} },
		"AllowCIDRs": func(c *AgentConfig) { c.AllowCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.1/8")} },
	} {
		cfg := h.agentConfig("node-a")
		mod(&cfg)
		_, err := NewAgent(cfg)
		if ce, ok := err.(*ConfigError); !ok || ce.Field != field {
			t.Errorf("%s: NewAgent = %v, want a ConfigError for it", field, err)
		}
	}
}
