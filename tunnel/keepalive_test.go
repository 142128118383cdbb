package tunnel

import (
	"context"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// keepaliveCase runs a server and an agent through a relay with the
// given keepalive settings.
func keepaliveCase(t *testing.T, srvInterval, agentInterval, timeout time.Duration) (*harness, *runningAgent, *relay, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *ServerConfig) {
		c.KeepaliveInterval, c.KeepaliveTimeout = srvInterval, timeout
		c.Registerer = reg
	})
	proxy := startRelay(t, h.agentAddr)
	cfg := h.agentConfig("node-a")
	cfg.ServerAddress = proxy.ln.Addr().String()
	cfg.KeepaliveInterval, cfg.KeepaliveTimeout = agentInterval, timeout
	cfg.Registerer = reg
	cfg.MinBackoff, cfg.MaxBackoff = 500*time.Millisecond, 500*time.Millisecond // unregistered ≥ 250ms between sessions
	return h, h.startAgent(cfg), proxy, reg
}

// keepaliveSlack is what the bound interval + timeout is allowed on top,
// for scheduling on a loaded machine under -race. Without keepalive the
// silent session would last for the OS's TCP timeouts: many minutes.
const keepaliveSlack = 2 * time.Second

// TestKeepaliveServerDropsSilentAgent: the agent's network goes silent; the
// server, pinging on its own (the agent's interval is an hour), closes the
// session within interval + timeout, ends the tunnel through it at once and
// removes the agent's routes.
func TestKeepaliveServerDropsSilentAgent(t *testing.T) {
	const interval, timeout = 200 * time.Millisecond, 300 * time.Millisecond
	h, agent, proxy, reg := keepaliveCase(t, interval, time.Hour, timeout)
	defer agent.stop() // it never notices; its stream would hold the echo target open
	expectMetric(t, reg, ge(1), "tunnel_server_keepalive_rtt_seconds")
	c := h.mustConnect(startEcho(t, "127.0.0.1:0"))
	if err := echoCheck(c, 4096); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	proxy.freeze()
	ctx, cancel := context.WithTimeout(context.Background(), interval+timeout+keepaliveSlack)
	defer cancel()
	for h.srv.Agents() != 0 {
		select {
		case <-h.srv.routes.Changed():
		case <-ctx.Done():
			t.Fatalf("the server still holds the silent agent %s after the freeze", time.Since(start))
		}
	}
	took := time.Since(start)
	t.Logf("server dropped the silent agent %s after the freeze (interval %s, timeout %s)", took.Round(time.Millisecond), interval, timeout)
	if err := waitClosed(c, time.Second); err != nil {
		t.Fatalf("tunnel through the dropped agent: %v", err)
	}
	if _, res := h.connect("127.0.0.1:1"); res.StatusCode != http.StatusBadGateway || !strings.Contains(res.Status, "no agent") {
		t.Fatalf("after the drop: %s, want 502 no agent", res.Status)
	}
}

// TestKeepaliveAgentReconnectsFromSilentServer: the server's network goes
// silent; the agent, pinging on its own (the server's interval is an hour),
// gives the session up within interval + timeout and registers again over
// a new connection.
func TestKeepaliveAgentReconnectsFromSilentServer(t *testing.T) {
	const interval, timeout = 200 * time.Millisecond, 300 * time.Millisecond
	_, agent, proxy, reg := keepaliveCase(t, time.Hour, interval, timeout)
	expectMetric(t, reg, ge(1), "tunnel_agent_keepalive_rtt_seconds")

	start := time.Now()
	proxy.freeze()
	bound := interval + timeout + keepaliveSlack
	for agent.Registered() {
		if time.Since(start) > bound {
			t.Fatalf("the agent still holds the silent session %s after the freeze", time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("agent gave up the silent session %s after the freeze (interval %s, timeout %s)", time.Since(start).Round(time.Millisecond), interval, timeout)
	expectMetric(t, reg, eq(1), "tunnel_agent_registered")
	expectMetric(t, reg, ge(1), "tunnel_agent_reconnects_total")
}

// TestKeepaliveHoldsNoGoroutine: keepalive runs on a timer, so between
// pings neither end has a goroutine in it (on a server with thousands of
// idle agents, one stack each), and the pings still go out from both ends.
func TestKeepaliveHoldsNoGoroutine(t *testing.T) {
	const interval = 50 * time.Millisecond
	_, agent, _, reg := keepaliveCase(t, interval, interval, 5*time.Second)
	defer agent.stop()
	expectMetric(t, reg, ge(3), "tunnel_server_keepalive_rtt_seconds")
	expectMetric(t, reg, ge(3), "tunnel_agent_keepalive_rtt_seconds")
	waitFor(t, "a moment with no goroutine in keepalive", func() bool {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		return !strings.Contains(stacks, "tunnel.keepalive(") && !strings.Contains(stacks, "tunnel.startKeepalive.")
	})
}
