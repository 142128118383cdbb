package tunnel

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// metricValue returns the value of the series name{labels} in g (for a
// histogram, its sample count), and whether the series exists. labels are
// name, value pairs.
func metricValue(t *testing.T, g prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				return sampleValue(m), true
			}
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// cond is what a metric's value must satisfy.
type cond struct {
	desc string
	ok   func(float64) bool
}

func eq(n float64) cond { return cond{fmt.Sprintf("== %v", n), func(v float64) bool { return v == n }} }
func ge(n float64) cond { return cond{fmt.Sprintf(">= %v", n), func(v float64) bool { return v >= n }} }

// expectMetric polls until name{labels} exists and satisfies want, for
// values that the copy path or a ping updates just after the client sees
// their effect.
func expectMetric(t *testing.T, g prometheus.Gatherer, want cond, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, found := metricValue(t, g, name, labels...)
		if found && want.ok(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s%v = %v (exists: %v), want %s", name, labels, v, found, want.desc)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metricCheck is one expected series.
type metricCheck struct {
	name   string
	labels []string
	want   cond
}

// TestMetricsCountTraffic sends a successful echo, a dial to a node without
// an agent and a refused dial through a real tunnel and checks each series
// of the server's and the agent's registries.
func TestMetricsCountTraffic(t *testing.T) {
	srvReg, agentReg := prometheus.NewRegistry(), prometheus.NewRegistry()
	h := newHarness(t, func(c *ServerConfig) {
		c.Registerer = srvReg
		c.KeepaliveInterval = 20 * time.Millisecond
	})
	cfg := h.agentConfig("node-a")
	cfg.Registerer = agentReg
	cfg.KeepaliveInterval = 20 * time.Millisecond
	h.startAgent(cfg)

	const n = 1 << 20
	c := h.mustConnect(startEcho(t, "127.0.0.1:0"))
	if err := echoCheck(c, n); err != nil {
		t.Fatal(err)
	}
	expectMetric(t, srvReg, eq(1), "tunnel_server_streams_open")
	expectMetric(t, agentReg, eq(1), "tunnel_agent_streams_open")
	c.Close()
	if _, res := h.connect("10.9.9.9:10250"); res.StatusCode != http.StatusBadGateway {
		t.Fatalf("no agent: %s", res.Status)
	}
	refusing := listenTCP(t, "127.0.0.1:0")
	closed := refusing.Addr().String()
	refusing.Close()
	if _, res := h.connect(closed); res.StatusCode != http.StatusBadGateway {
		t.Fatalf("refused: %s", res.Status)
	}

	for _, m := range []metricCheck{
		{"tunnel_server_agents_connected", nil, eq(1)},
		{"tunnel_server_agent_registrations_total", nil, eq(1)},
		{"tunnel_server_dials_total", []string{"result", "ok"}, eq(1)},
		{"tunnel_server_dials_total", []string{"result", "no_agent"}, eq(1)},
		{"tunnel_server_dials_total", []string{"result", "refused"}, eq(1)},
		{"tunnel_server_dials_total", []string{"result", "timeout"}, eq(0)},
		{"tunnel_server_dial_duration_seconds", []string{"stage", "proxy"}, eq(2)},
		{"tunnel_server_dial_duration_seconds", []string{"stage", "connect"}, eq(2)},
		{"tunnel_server_bytes_total", []string{"direction", "to_node"}, ge(n)},
		{"tunnel_server_bytes_total", []string{"direction", "from_node"}, ge(n)},
		{"tunnel_server_frontend_requests_total", []string{"code", "200"}, eq(1)},
		{"tunnel_server_frontend_requests_total", []string{"code", "502"}, eq(2)},
		{"tunnel_server_streams_open", nil, eq(0)},
		{"tunnel_server_keepalive_rtt_seconds", nil, ge(1)},
		{"tunnel_server_agent_rejections_total", []string{"reason", RejectIdentity}, eq(0)},
	} {
		expectMetric(t, srvReg, m.want, m.name, m.labels...)
	}
	for _, m := range []metricCheck{
		{"tunnel_agent_registered", nil, eq(1)},
		{"tunnel_agent_dials_total", []string{"result", "ok"}, eq(1)},
		{"tunnel_agent_dials_total", []string{"result", "refused"}, eq(1)},
		{"tunnel_agent_dial_duration_seconds", nil, eq(2)},
		{"tunnel_agent_bytes_total", []string{"direction", "to_node"}, ge(n)},
		{"tunnel_agent_bytes_total", []string{"direction", "from_node"}, ge(n)},
		{"tunnel_agent_streams_open", nil, eq(0)},
		{"tunnel_agent_reconnects_total", nil, eq(0)},
		{"tunnel_agent_keepalive_rtt_seconds", nil, ge(1)},
	} {
		expectMetric(t, agentReg, m.want, m.name, m.labels...)
	}
}

// TestMetricsRejectionReasons checks that each refused registration is
// counted under its reason.
func TestMetricsRejectionReasons(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *ServerConfig) { c.Registerer = reg })
	other := newHarness(t, nil)
	for _, tc := range []struct {
		name   string
		mod    func(*AgentConfig)
		reason string
	}{
		{"unproven name", func(c *AgentConfig) { c.NodeName = "node-b" }, RejectIdentity},
		{"unproven IP", func(c *AgentConfig) { c.NodeIPs = []netip.Addr{netip.MustParseAddr("127.0.0.2")} }, RejectRoutes},
		{"default route untrusted", func(c *AgentConfig) { c.DefaultRoute = true }, RejectRoutes},
		{"certificate from another CA", func(c *AgentConfig) {
			c.TLS = other.agentConfig("node-a").TLS
			c.TLS.RootCAs = h.pool
		}, RejectHandshake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := metricValue(t, reg, "tunnel_server_agent_rejections_total", "reason", tc.reason)
			cfg := h.agentConfig("node-a")
			tc.mod(&cfg)
			if err := registerOnce(t, cfg); err == nil {
				t.Fatal("registered")
			}
			expectMetric(t, reg, eq(before+1), "tunnel_server_agent_rejections_total", "reason", tc.reason)
		})
	}
	if v, _ := metricValue(t, reg, "tunnel_server_agent_registrations_total"); v != 0 {
		t.Errorf("registrations_total = %v after only rejections", v)
	}
}

// TestMetricsRegistererConflict: two servers on one registry collide, and
// NewServer says so instead of panicking.
func TestMetricsRegistererConflict(t *testing.T) {
	reg := prometheus.NewRegistry()
	newHarness(t, func(c *ServerConfig) { c.Registerer = reg })
	h := newHarness(t, nil)
	cfg := h.srv.cfg
	cfg.Registerer = reg
	_, err := NewServer(cfg)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "Registerer" {
		t.Fatalf("second server on one registry: %v, want a ConfigError for Registerer", err)
	}
}
