//go:build linux

package attack

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// Attack 5: hang-ups at every step of a dial. The server runs with
// --dial-timeout 20s so that "promptly" (a few seconds) is far from it.
//
//   - The client hangs up after sending its CONNECT, while the agent's dial
//     hangs (the destination's accept queue is full, so its SYNs are
//     dropped): the server must give up the dial and tell the agent, which
//     must stop dialing — its socket to the destination closed, the dial
//     counted as ended — within a few seconds, not at the dial timeout.
//   - The client hangs up right after the 200, and in the middle of a
//     transfer (FIN and RST): the destination sees its connection end and
//     both ends' stream gauges return to zero promptly.
//   - The agent is killed in the middle of a transfer: the client sees EOF
//     or a reset promptly.
func TestHangUps(t *testing.T) {
	t.Parallel()
	const (
		dialTimeout = 20 * time.Second
		prompt      = 3 * time.Second
	)
	cs := newCerts(t, nodeA+"="+nodeAIP)
	srv := startServer(t, cs, serverOpts{dialTimeout: dialTimeout, frontend: true})
	client := cs.pair(t, "client")
	tlsCfg := cs.clientTLS(&client)
	ag := startAgent(t, srv, agentOpts{node: nodeA, ips: []string{nodeAIP}})
	echo := startTarget(t, nodeAIP, serveEcho)
	mustTunnel(t, srv, echo)

	hangups := []struct {
		name  string
		dial  func() (net.Conn, error)
		reset bool
	}{
		{"unix socket, close", func() (net.Conn, error) { return dialUDS(srv) }, false},
		{"tcp+mTLS, close", func() (net.Conn, error) { return dialFrontend(srv, tlsCfg) }, false},
		{"tcp+mTLS, reset", func() (net.Conn, error) { return dialFrontend(srv, tlsCfg) }, true},
	}
	connect := func(dial func() (net.Conn, error), dest string) (*tunnelConn, error) {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		tc, code, status, err := request(c, connectRequest(dest), 15*time.Second)
		if err == nil && code != 200 {
			err = fmt.Errorf("CONNECT %s: %q", dest, status)
		}
		if err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}

	bulk := startBulk(t, nodeAIP)
	for _, h := range hangups {
		t.Run("client hangs up right after 200 ("+h.name+")", func(t *testing.T) {
			base := baseline(t, srv.adminAddr)
			before := streams(srv, ag)
			c, err := connect(h.dial, echo)
			if err != nil {
				t.Fatal(err)
			}
			hangUp(c, h.reset)
			expectBaseline(t, "tunnel-server", srv.adminAddr, base)
			expectStreamsClosed(t, srv, ag, before, prompt)
		})
		t.Run("client hangs up mid-transfer ("+h.name+")", func(t *testing.T) {
			base := baseline(t, srv.adminAddr)
			before := streams(srv, ag)
			c, err := connect(h.dial, bulk.addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(ioTimeout))
			if _, err := io.CopyN(io.Discard, c, 4<<20); err != nil {
				t.Fatalf("download before the hang-up: %v", err)
			}
			start := time.Now()
			hangUp(c, h.reset)
			if e, ok := bulk.waitEnd(prompt); !ok {
				t.Errorf("the destination's connection still open %s after the client hung up mid-transfer", prompt)
			} else {
				t.Logf("destination's connection ended %s after the hang-up (%s, %d bytes sent)",
					e.at.Sub(start).Round(time.Millisecond), e.how, e.sent)
			}
			expectBaseline(t, "tunnel-server", srv.adminAddr, base)
			expectStreamsClosed(t, srv, ag, before, prompt)
		})
	}

	// Hang-ups while the agent dials, one destination each, side by side
	// (a failure costs the dial timeout once, not once per variant).
	base := baseline(t, srv.adminAddr)
	t.Run("client hangs up while the agent dials", func(t *testing.T) {
		for _, h := range hangups {
			blocked := startBlocked(t, nodeAIP)
			t.Run(h.name, func(t *testing.T) {
				t.Parallel()
				c, err := h.dial()
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := io.WriteString(c, connectRequest(blocked.addr)); err != nil {
					t.Fatal(err)
				}
				// The agent's SYN to the destination shows the dial is under way.
				eventually(t, 5*time.Second, func() (bool, string) {
					return synSentTo(t, blocked.addr) > 0, "no connection to " + blocked.addr + " in SYN-SENT: the agent is not dialing"
				})
				time.Sleep(300 * time.Millisecond)
				start := time.Now()
				hangUp(c, h.reset)
				var tookAgent, tookServer time.Duration
				var okAgent, okServer bool
				within(prompt, func() bool {
					if !okAgent && synSentTo(t, blocked.addr) == 0 {
						okAgent, tookAgent = true, time.Since(start)
					}
					if !okServer && dialEnded(srv, blocked.addr) {
						okServer, tookServer = true, time.Since(start)
					}
					return okAgent && okServer
				})
				if !okAgent {
					t.Errorf("agent still dialing %s %s after the client hung up (a SYN-SENT socket to it); --dial-timeout %s",
						blocked.addr, time.Since(start).Round(time.Millisecond), dialTimeout)
				} else {
					t.Logf("agent stopped dialing %s after the client hung up", tookAgent.Round(time.Millisecond))
				}
				if !okServer {
					t.Errorf("server still waiting for the dial to %s %s after the client hung up (no \"dial failed\" logged for it); --dial-timeout %s",
						blocked.addr, time.Since(start).Round(time.Millisecond), dialTimeout)
				} else {
					t.Logf("server ended the dial %s after the client hung up", tookServer.Round(time.Millisecond))
				}
			})
		}
	})
	if t.Failed() {
		t.Log("server baseline not checked after the dial hang-ups: their dials run to the dial timeout")
	} else {
		expectBaseline(t, "tunnel-server", srv.adminAddr, base)
	}

	t.Run("agent killed mid-transfer", func(t *testing.T) {
		base := baseline(t, srv.adminAddr)
		c, code, status, err := connectUDS(srv, bulk.addr)
		if err != nil || code != 200 {
			t.Fatalf("CONNECT %s: %q %v", bulk.addr, status, err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		if _, err := io.CopyN(io.Discard, c, 4<<20); err != nil {
			t.Fatalf("download before the kill: %v", err)
		}
		ag.kill(t)
		start := time.Now()
		c.SetReadDeadline(start.Add(prompt))
		n, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("client's connection still open %s after the agent was killed (%d more bytes)", prompt, n)
		} else {
			t.Logf("client saw the end (%v) %s after the agent was killed, %d more bytes", err, time.Since(start).Round(time.Millisecond), n)
		}
		if _, ok := within(prompt, func() bool {
			return metric(srv.adminAddr, "tunnel_server_streams_open") == 0 &&
				metric(srv.adminAddr, "tunnel_server_agents_connected") == 0
		}); !ok {
			t.Errorf("server still holds the dead agent's tunnel or session %s after the kill: tunnel_server_streams_open %v, tunnel_server_agents_connected %v "+
				"(PROTOCOL.md, \"Lost agent\": every frontend connection that used it is closed; a client that saw EOF and keeps its side open must not keep the tunnel)",
				prompt, metric(srv.adminAddr, "tunnel_server_streams_open"), metric(srv.adminAddr, "tunnel_server_agents_connected"))
		}
		// Whatever the server kept, the client's close must free; the
		// baseline had the agent's session, so fewer goroutines is fine.
		c.Close()
		expectBaseline(t, "tunnel-server", srv.adminAddr, base)
	})
}

// hangUp closes c; if reset, its TCP connection with a reset (SO_LINGER
// 0) and no TLS close_notify.
func hangUp(c net.Conn, reset bool) {
	if tc, ok := c.(*tunnelConn); ok {
		c = tc.Conn
	}
	if tc, ok := c.(*tls.Conn); ok && reset {
		if tcp, ok := tc.NetConn().(*net.TCPConn); ok {
			tcp.SetLinger(0)
			tcp.Close()
			return
		}
	}
	c.Close()
}

// streamCounts are both ends' stream gauges.
type streamCounts struct{ server, agent float64 }

func streams(srv *server, ag *agent) streamCounts {
	return streamCounts{metric(srv.adminAddr, "tunnel_server_streams_open"), metric(ag.adminAddr, "tunnel_agent_streams_open")}
}

// expectStreamsClosed requires both ends' stream gauges to return to what
// they were before (a tunnel opened and hung up) within d. Mid-transfer,
// the agent's side closes because the server resets the stream
// (PROTOCOL.md, "Failure").
func expectStreamsClosed(t *testing.T, srv *server, ag *agent, before streamCounts, d time.Duration) {
	t.Helper()
	took, ok := within(d, func() bool { return metric(srv.adminAddr, "tunnel_server_streams_open") <= before.server })
	if !ok {
		t.Errorf("server's stream still open %s after the hang-up: tunnel_server_streams_open %v, before the tunnel %v",
			d, metric(srv.adminAddr, "tunnel_server_streams_open"), before.server)
	} else {
		t.Logf("server's stream closed %s after the hang-up", took.Round(time.Millisecond))
	}
	took, ok = within(d, func() bool { return metric(ag.adminAddr, "tunnel_agent_streams_open") <= before.agent })
	if ok {
		t.Logf("agent's stream closed %s after the hang-up", took.Round(time.Millisecond))
		return
	}
	t.Errorf("agent's stream still open %s after the hang-up: tunnel_agent_streams_open %v, before the tunnel %v",
		d, metric(ag.adminAddr, "tunnel_agent_streams_open"), before.agent)
}

// synSentTo counts the TCP sockets on this host (the agent's, here) that
// are connecting to addr (state SYN-SENT in /proc/net/tcp).
func synSentTo(t *testing.T, addr string) int {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	ip := ap.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == want && f[3] == "02" {
			n++
		}
	}
	return n
}

// dialEnded reports whether the server logged the end of its dial to dest
// (every failed dial is logged with its destination).
func dialEnded(srv *server, dest string) bool {
	for _, line := range strings.Split(srv.out.String(), "\n") {
		if strings.Contains(line, `msg="dial failed"`) && logValue(line, "dest") == dest {
			return true
		}
	}
	return false
}
