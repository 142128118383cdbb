package tunnel

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// TestAgentHandsTunnelsToSuccessor: a draining agent with a handoff socket
// gives its open tunnels — one idle keep-alive, one carrying data the whole
// time — to the agent started after it, and exits at once; the frontend
// connections go on through the new agent without a lost or repeated byte,
// over the same node-side TCP connections.
func TestAgentHandsTunnelsToSuccessor(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.HandoffSocket = filepath.Join(t.TempDir(), "handoff.sock")
	cfg.DrainTimeout = time.Minute
	cfg.DrainIdle = time.Minute // nothing may be closed as idle: it must move
	old := h.startAgent(cfg)

	var accepts atomic.Int32
	echo := startCountingEcho(t, &accepts)
	idle := h.mustConnect(echo)
	if err := echoCheck(idle, 64<<10); err != nil {
		t.Fatal(err)
	}
	busy := h.mustConnect(echo)
	busyErr := make(chan error, 1)
	stopBusy := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopBusy:
				busyErr <- nil
				return
			default:
			}
			if err := echoCheck(busy, 32<<10); err != nil {
				busyErr <- err
				return
			}
		}
	}()

	stopped := make(chan struct{})
	start := time.Now()
	go func() { old.stop(); close(stopped) }()
	waitFor(t, "the server to see the agent draining", func() bool {
		all := h.srv.routes.all()
		return len(all) == 1 && all[0].draining.Load()
	})
	h.runAgent(cfg)
	select {
	case <-stopped:
		t.Logf("old agent handed its tunnels over and stopped %s after its drain began", time.Since(start).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("draining agent did not stop: its tunnels were not handed over")
	}
	time.Sleep(200 * time.Millisecond) // data keeps flowing through the new agent
	close(stopBusy)
	if err := <-busyErr; err != nil {
		t.Fatalf("busy tunnel across the handoff: %v", err)
	}
	if err := echoCheck(idle, 1<<20); err != nil {
		t.Fatalf("idle tunnel after the handoff: %v", err)
	}
	if n := accepts.Load(); n != 2 {
		t.Fatalf("the target accepted %d connections, want the 2 it had before the handoff", n)
	}
	var m dto.Metric
	h.srv.metrics.moves.Write(&m)
	if got := m.GetCounter().GetValue(); got != 2 {
		t.Fatalf("tunnel_server_tunnels_moved_total = %v, want 2", got)
	}
	idle.Close()
	busy.Close()
}

// startCountingEcho is startEcho that counts the connections it accepts.
func startCountingEcho(t *testing.T, accepts *atomic.Int32) string {
	ln := listenTCP(t, "127.0.0.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			go func(c net.Conn) {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String()
}

// TestMoveHostileAgent: an agent cannot take or stop another node's
// tunnel: its move frame for it is ignored, and its adopt streams — for
// that tunnel, for one that is not moving, for one that does not exist —
// are refused with the reason, while the tunnel goes on untouched.
func TestMoveHostileAgent(t *testing.T) {
	h := newHarness(t, nil)
	victimCfg := h.agentConfig("node-a")
	victimCfg.HandoffSocket = filepath.Join(t.TempDir(), "a.sock")
	h.startAgent(victimCfg)
	c := h.mustConnect(startEcho(t, "127.0.0.1:0"))
	var id uint64
	waitFor(t, "the open tunnel to be movable", func() bool { // carry registers it just after the 200
		h.srv.moves.Range(func(k, _ any) bool { id = k.(uint64); return false })
		return id != 0
	})

	evilCfg := h.agentConfig("node-b")
	evil := h.startAgent(evilCfg)
	var s *agentSession
	waitFor(t, "the agent's session", func() bool {
		evil.mu.Lock()
		defer evil.mu.Unlock()
		for _, s = range evil.sessions {
		}
		return s != nil
	})
	if err := s.tell(appendDialID(nil, frameMove, id), time.Second); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   uint64
		want string
	}{{id, "another node"}, {id + 1000, "no such tunnel"}} {
		st, err := s.sess.Open(context.Background(), appendDialID(nil, frameAdopt, tc.id))
		if err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := readDialResponse(st)
		if err != nil || resp.Result == ResultOK || !strings.Contains(resp.Message, tc.want) {
			t.Fatalf("adopt of dial %d by another node: %+v, %v; want a refusal naming %q", tc.id, resp, err, tc.want)
		}
		st.Close()
	}
	h.srv.moves.Range(func(_, v any) bool {
		mv := v.(*moving)
		mv.mu.Lock()
		defer mv.mu.Unlock()
		if st := mv.m.state.Load(); st != moveNone {
			t.Errorf("tunnel's move state is %d after another node's move frame, want none", st)
		}
		return true
	})
	if err := echoCheck(c, 1<<20); err != nil {
		t.Fatalf("tunnel after another node's move and adopts: %v", err)
	}
	c.Close()
}
