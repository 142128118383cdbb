package tunnel

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// limitHarness is a harness whose server counts on its own registry.
func limitHarness(t *testing.T, mod func(*ServerConfig)) (*harness, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *ServerConfig) {
		c.Registerer = reg
		mod(c)
	})
	return h, reg
}

// expectStatus sends a CONNECT for dest and expects code with reason in the
// status line.
func expectStatus(t *testing.T, h *harness, dest string, code int, reason string) {
	t.Helper()
	_, res := h.connect(dest)
	if res.StatusCode != code || !strings.Contains(res.Status, reason) {
		t.Errorf("CONNECT %s: %q, want %d %s", dest, res.Status, code, reason)
	}
}

// TestLimitMaxAgents: a registration beyond MaxAgents is refused with a
// reason the agent sees; the place is free again once an agent leaves.
func TestLimitMaxAgents(t *testing.T) {
	h, reg := limitHarness(t, func(c *ServerConfig) { c.MaxAgents = 1 })
	first := h.startAgent(h.agentConfig("node-a"))
	var rej *RejectedError
	if err := registerOnce(t, h.agentConfig("node-b")); !errors.As(err, &rej) || !strings.Contains(rej.Reason, "limit of 1 agents") {
		t.Fatalf("second agent: %v, want a rejection naming the agent limit", err)
	}
	expectMetric(t, reg, eq(1), "tunnel_server_agent_rejections_total", "reason", RejectLimit)
	expectMetric(t, reg, eq(1), "tunnel_server_limit_rejections_total", "limit", LimitAgents)
	first.stop()
	waitFor(t, "node-a to leave", func() bool { return h.srv.Agents() == 0 })
	h.startAgent(h.agentConfig("node-b"))
}

// TestLimitStreamsPerAgent: a dial beyond MaxStreamsPerAgent gets 503
// "agent at its stream limit"; closing a tunnel frees its place.
func TestLimitStreamsPerAgent(t *testing.T) {
	h, reg := limitHarness(t, func(c *ServerConfig) { c.MaxStreamsPerAgent = 2 })
	h.startAgent(h.agentConfig("node-a"))
	echo := startEcho(t, "127.0.0.1:0")
	c1, c2 := h.mustConnect(echo), h.mustConnect(echo)
	expectStatus(t, h, echo, http.StatusServiceUnavailable, "agent node-a at its stream limit (2, --max-streams-per-agent)")
	if err := echoCheck(c2, 1000); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	var c3 net.Conn
	waitFor(t, "a place on node-a after a tunnel closed", func() bool {
		c, res := h.connect(echo)
		c3 = c
		return res.StatusCode == http.StatusOK
	})
	if err := echoCheck(c3, 1000); err != nil {
		t.Fatal(err)
	}
	expectMetric(t, reg, ge(1), "tunnel_server_limit_rejections_total", "limit", LimitStreamsPerAgent)
	expectMetric(t, reg, ge(1), "tunnel_server_dials_total", "result", "limit")
	expectMetric(t, reg, ge(1), "tunnel_server_frontend_requests_total", "code", "503")
}

// blockingDial is a Dial hook for which destinations on port 7 hang until
// release is closed; entered gets a value for each such dial.
func blockingDial(entered chan<- struct{}, release <-chan struct{}) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if strings.HasSuffix(addr, ":7") {
			entered <- struct{}{}
			select {
			case <-release:
				return nil, errors.New("released by the test")
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

// TestLimitPendingDials: while MaxPendingDials dials are in progress, the
// next gets 503 at once; when one finishes, dials go through again.
func TestLimitPendingDials(t *testing.T) {
	h, reg := limitHarness(t, func(c *ServerConfig) { c.MaxPendingDials = 1 })
	entered, release := make(chan struct{}, 1), make(chan struct{})
	cfg := h.agentConfig("node-a")
	cfg.Dial = blockingDial(entered, release)
	h.startAgent(cfg)
	echo := startEcho(t, "127.0.0.1:0")
	slow := make(chan int, 1)
	go func() {
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			slow <- 0
			return
		}
		defer c.Close()
		c.Write([]byte("CONNECT 127.0.0.1:7 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			slow <- 0
			return
		}
		slow <- res.StatusCode
	}()
	<-entered
	expectStatus(t, h, echo, http.StatusServiceUnavailable, "too many dials in progress (1, --max-pending-dials)")
	close(release)
	if code := <-slow; code != http.StatusBadGateway {
		t.Errorf("the pending dial answered %d, want 502", code)
	}
	if err := echoCheck(h.mustConnect(echo), 1000); err != nil {
		t.Fatal(err)
	}
	expectMetric(t, reg, eq(1), "tunnel_server_limit_rejections_total", "limit", LimitPendingDials)
}

// TestLimitTimeoutsCounted: the handshake, header and dial bounds cut off
// what exceeds them, and each is counted under its limit.
func TestLimitTimeoutsCounted(t *testing.T) {
	h, reg := limitHarness(t, func(c *ServerConfig) {
		c.HandshakeTimeout = 500 * time.Millisecond
		c.HeaderTimeout = 200 * time.Millisecond
		c.DialTimeout = 200 * time.Millisecond
		c.MaxHeaderBytes = 1024
	})
	cfg := h.agentConfig("node-a")
	cfg.HandshakeTimeout = 5 * time.Second
	cfg.Dial = blockingDial(make(chan struct{}, 1), nil)
	h.startAgent(cfg)
	before, _ := metricValue(t, reg, "tunnel_server_limit_rejections_total", "limit", LimitHandshakeTimeout)

	silent, err := net.Dial("tcp", h.agentAddr) // an agent that never says a word
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if err := waitClosed(silent, 3*time.Second); err != nil {
		t.Errorf("silent agent connection: %v", err)
	}
	expectMetric(t, reg, eq(before+1), "tunnel_server_limit_rejections_total", "limit", LimitHandshakeTimeout)

	stalled, err := net.Dial("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	io.WriteString(stalled, "CONNECT 127.0.0.1:80 HTTP/1.1\r\n")
	if err := waitClosed(stalled, 3*time.Second); err != nil {
		t.Errorf("stalled CONNECT: %v", err)
	}
	expectMetric(t, reg, eq(1), "tunnel_server_limit_rejections_total", "limit", LimitHeaderTimeout)

	big, err := net.Dial("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	io.WriteString(big, "CONNECT 127.0.0.1:80 HTTP/1.1\r\nX: "+strings.Repeat("a", 2000)+"\r\n\r\n")
	if res, err := http.ReadResponse(bufio.NewReader(big), nil); err != nil || res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized CONNECT: %v %v, want 431", res, err)
	}
	expectMetric(t, reg, eq(1), "tunnel_server_limit_rejections_total", "limit", LimitHeaderSize)

	expectStatus(t, h, "127.0.0.1:7", http.StatusGatewayTimeout, "timed out after 200ms")
	expectMetric(t, reg, eq(1), "tunnel_server_limit_rejections_total", "limit", LimitDialTimeout)
}

// TestServerConfigLimits: the window formula and the settings Validate
// refuses.
func TestServerConfigLimits(t *testing.T) {
	for _, tc := range []struct {
		budget  int64
		streams int
		want    uint32
	}{
		{1 << 30, 1024, 1 << 20},     // the defaults: 1 MiB
		{1 << 30, 16, 16 << 20},      // clamped to 16 MiB
		{256 << 20, 1024, 256 << 10}, // exactly the minimum
		{3 << 20, 2, 3 << 19},
	} {
		c := DefaultServerConfig()
		c.SessionWindowBudget, c.MaxStreamsPerAgent = tc.budget, tc.streams
		if err := c.validateLimits(); err != nil {
			t.Errorf("budget %d, %d streams: %v", tc.budget, tc.streams, err)
		}
		if got := c.streamWindow(); got != tc.want {
			t.Errorf("budget %d, %d streams: window %d, want %d", tc.budget, tc.streams, got, tc.want)
		}
	}
	h := newHarness(t, nil)
	for field, mod := range map[string]func(*ServerConfig){
		"SessionWindowBudget":  func(c *ServerConfig) { c.SessionWindowBudget = 100 << 20 }, // < 1024 × 256 KiB
		"MaxAgents":            func(c *ServerConfig) { c.MaxAgents = 0 },
		"MaxStreamsPerAgent":   func(c *ServerConfig) { c.MaxStreamsPerAgent = -1 },
		"MaxPendingDials":      func(c *ServerConfig) { c.MaxPendingDials = 0 },
		"ReplacedDrainTimeout": func(c *ServerConfig) { c.ReplacedDrainTimeout = 0 },
	} {
		c := h.srv.cfg
		mod(&c)
		var ce *ConfigError
		if err := c.Validate(); !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("%s: Validate = %v, want a ConfigError for it", field, err)
		}
	}
}
