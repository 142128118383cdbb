package tunnel

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// freezeProxy forwards TCP to a fixed address. freeze makes every
// connection carried so far go silent — nothing more is forwarded either
// way, yet no socket is closed — which is what a peer behind a network that
// drops every packet looks like. New connections are forwarded normally.
type freezeProxy struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	frozen chan struct{} // closed by freeze: the copies carried so far stop
	wg     sync.WaitGroup
}

func startFreezeProxy(t *testing.T, to string) *freezeProxy {
	p := &freezeProxy{ln: listenTCP(t, "127.0.0.1:0"), frozen: make(chan struct{})}
	p.wg.Add(1)
	go p.acceptLoop(to)
	t.Cleanup(func() {
		p.ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *freezeProxy) acceptLoop(to string) {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", to)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		frozen := p.frozen
		p.mu.Unlock()
		p.wg.Add(2)
		go p.forward(up, c, frozen)
		go p.forward(c, up, frozen)
	}
}

// forward copies src to dst until either fails or frozen is closed; once
// frozen it neither reads nor writes, and leaves both sockets open.
func (p *freezeProxy) forward(dst, src net.Conn, frozen chan struct{}) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-frozen:
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// freeze silences every connection carried so far, and makes later ones
// forward normally.
func (p *freezeProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.frozen)
	p.frozen = make(chan struct{})
}

// keepaliveCase runs a server and an agent through a freezeProxy with the
// given keepalive settings.
func keepaliveCase(t *testing.T, srvInterval, agentInterval, timeout time.Duration) (*harness, *runningAgent, *freezeProxy, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *ServerConfig) {
		c.KeepaliveInterval, c.KeepaliveTimeout = srvInterval, timeout
		c.Registerer = reg
	})
	proxy := startFreezeProxy(t, h.agentAddr)
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
