package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// churnTunnels is how many tunnels TestChurn opens, uses and closes. `make
// test` runs the default; `make churn` runs 100,000 (README, "Testing").
var churnTunnels = flag.Int("churn.tunnels", 5000, "tunnels TestChurn opens and closes")

// Churn settings: concurrent clients, agent restarts per run, and the slack
// allowed between the baseline and the state after the run. The heap slack
// is what a leak of 40 bytes per tunnel would exceed over 100,000 tunnels.
const (
	churnWorkers        = 16
	churnRestarts       = 20
	churnGoroutineSlack = 2
	churnFDSlack        = 2
	churnHeapSlack      = 4 << 20
	churnSettle         = 10 * time.Second
)

// TestChurn opens and closes churnTunnels tunnels through three agents that
// are restarted during the run (half of the restarts drain, half are
// abrupt), each tunnel carrying a verified echo and a half-close, and then
// requires the process's goroutines, open files and live heap to come back
// to their level before the run. A tunnel may fail only while its node's
// agent is being restarted.
func TestChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the churn test in -short mode")
	}
	h := newHarness(t, func(c *ServerConfig) { c.TrustAgentRoutes = true; c.Logger = nil })
	nodes := h.churnNodes()
	warmup := min(*churnTunnels/10, 500)
	runChurn(t, h, nodes, warmup, 0)
	base := settle(t, h, snapshot{})
	t.Logf("baseline after %d warm-up tunnels: %s", warmup, base)

	start := time.Now()
	stats := runChurn(t, h, nodes, *churnTunnels, churnRestarts)
	t.Logf("%d tunnels in %s with %d agent restarts: %d answered 502 no agent and %d ended early, all while their agent restarted",
		stats.ok, time.Since(start).Round(time.Millisecond), stats.restarts, stats.noAgent, stats.interrupted)
	if t.Failed() {
		return
	}
	after := settle(t, h, base)
	t.Logf("after:                               %s", after)
	if n := h.srv.Tunnels(); n != 0 {
		t.Errorf("the server still counts %d tunnels", n)
	}
	if n := h.srv.Agents(); n != len(nodes) {
		t.Errorf("the server counts %d agents, want %d", n, len(nodes))
	}
}

// churnNode is one node's agent, restarted during the run, and its target.
type churnNode struct {
	cfg   AgentConfig
	agent *runningAgent
	echo  string
	// gen is odd while the agent is being restarted; a tunnel may fail
	// only if gen was odd or changed while it was in use.
	gen atomic.Uint64
}

// churnNodes starts an agent and an echo target for each of three nodes.
func (h *harness) churnNodes() []*churnNode {
	var nodes []*churnNode
	for i, name := range []string{"node-a", "node-b", "node-c"} {
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)})
		cfg := h.agentConfig(name)
		cfg.NodeIPs = []netip.Addr{ip} // node-c's certificate has none: trusted routes
		cfg.Logger = nil
		n := &churnNode{cfg: cfg, echo: startEcho(h.t, ip.String()+":0")}
		n.agent = h.startAgent(cfg)
		nodes = append(nodes, n)
	}
	return nodes
}

// restart stops the node's agent and starts a new one for the same node,
// whose own stop will drain its tunnels (for up to 5s) or end them at once.
// It returns once the new agent is registered.
func (n *churnNode) restart(h *harness, drainNext bool) error {
	n.gen.Add(1)
	defer n.gen.Add(1)
	n.agent.stop()
	n.cfg.DrainTimeout = time.Millisecond
	if drainNext {
		n.cfg.DrainTimeout = 5 * time.Second
	}
	n.agent = h.runAgent(n.cfg)
	for deadline := time.Now().Add(10 * time.Second); !n.agent.Registered(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %s did not register again within 10s", n.cfg.NodeName)
		}
	}
	return nil
}

// churnStats counts what a run did.
type churnStats struct {
	ok, noAgent, interrupted, restarts int64
}

// runChurn runs churnWorkers clients until n tunnels have succeeded,
// restarting an agent every n/restarts tunnels.
func runChurn(t *testing.T, h *harness, nodes []*churnNode, n, restarts int) churnStats {
	var ok, noAgent, interrupted atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, churnWorkers)
	for w := range churnWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(n)))
			for i := w; ok.Load() < int64(n); i += churnWorkers {
				node := nodes[i%len(nodes)]
				gen := node.gen.Load()
				err := churnTunnel(h.sock, node.echo, rng)
				switch {
				case err == nil:
					ok.Add(1)
					continue
				case gen%2 == 0 && node.gen.Load() == gen:
					errc <- fmt.Errorf("tunnel to %s failed while its agent was up: %w", node.cfg.NodeName, err)
					return
				case errors.Is(err, errNoAgent):
					noAgent.Add(1)
				default:
					interrupted.Add(1)
				}
				time.Sleep(time.Millisecond) // the agent is restarting
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var restarted int64
	for k := 1; k <= restarts; k++ {
		if !waitCount(&ok, int64(k*n/(restarts+1)), done) {
			break
		}
		if err := nodes[k%len(nodes)].restart(h, k%2 == 1); err != nil {
			t.Errorf("restart %d: %v", k, err)
			break
		}
		restarted++
	}
	<-done
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	return churnStats{ok: ok.Load(), noAgent: noAgent.Load(), interrupted: interrupted.Load(), restarts: restarted}
}

// waitCount waits until c reaches n, or reports false if done closes first.
func waitCount(c *atomic.Int64, n int64, done <-chan struct{}) bool {
	for c.Load() < n {
		select {
		case <-done:
			return false
		case <-time.After(time.Millisecond):
		}
	}
	return true
}

var errNoAgent = errors.New("502 no agent")

// churnTunnel opens one tunnel to the echo target at dest, sends 1 to 4096
// random bytes, half-closes, and requires exactly those bytes and then EOF.
func churnTunnel(sock, dest string, rng *rand.Rand) error {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", dest); err != nil {
		return err
	}
	res, err := http.ReadResponse(bufio.NewReaderSize(oneByteReader{c}, 16), nil)
	if err != nil {
		return fmt.Errorf("reading CONNECT response: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		if res.StatusCode == http.StatusBadGateway && strings.Contains(res.Status, "no agent") {
			return errNoAgent
		}
		return fmt.Errorf("CONNECT %s: %s", dest, res.Status)
	}
	want := make([]byte, 1+rng.IntN(4096))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	if _, err := c.Write(want); err != nil {
		return err
	}
	if err := c.(*net.UnixConn).CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("echo after %d of %d bytes: %w", len(got), len(want), err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echo of %d bytes came back as %d different bytes", len(want), len(got))
	}
	return nil
}

// snapshot is the process's resource use at one moment.
type snapshot struct {
	goroutines, fds int
	heap, rss       uint64 // live heap after GC, resident set
}

func (s snapshot) String() string {
	return fmt.Sprintf("%d goroutines, %d open files, heap %.1f MiB live, RSS %.1f MiB",
		s.goroutines, s.fds, float64(s.heap)/(1<<20), float64(s.rss)/(1<<20))
}

// settle waits for the server to have no tunnels and, given a baseline, for
// goroutines, files and heap to come back within the slack of it; it
// returns the state it measured last. With a zero base it measures the
// baseline: no tunnels, and two measurements in a row with the same
// goroutines and files.
func settle(t *testing.T, h *harness, base snapshot) snapshot {
	t.Helper()
	deadline := time.Now().Add(churnSettle)
	var last snapshot
	for {
		s := measure(t)
		switch {
		case h.srv.Tunnels() > 0 && time.Now().Before(deadline):
		case base == (snapshot{}): // the baseline: once goroutines and files hold still
			if s.goroutines == last.goroutines && s.fds == last.fds || time.Now().After(deadline) {
				return s
			}
			last = s
		case s.goroutines <= base.goroutines+churnGoroutineSlack && s.fds <= base.fds+churnFDSlack &&
			s.heap <= base.heap+churnHeapSlack:
			return s
		case time.Now().After(deadline):
			t.Errorf("not back to the baseline %s after %s: %s (slack: %d goroutines, %d files, %d MiB heap)",
				churnSettle, base, s, churnGoroutineSlack, churnFDSlack, churnHeapSlack>>20)
			if s.goroutines > base.goroutines+churnGoroutineSlack {
				buf := make([]byte, 1<<20)
				t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
			}
			return s
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// measure reads the process's goroutines, open files (/proc/self/fd),
// live heap after a full collection and resident set (/proc/self/status).
func measure(t *testing.T) snapshot {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory() // a second collection, which also empties sync.Pools, and returns memory
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{goroutines: runtime.NumGoroutine(), fds: len(fds), heap: ms.HeapAlloc, rss: rssBytes(t)}
}

func rssBytes(t *testing.T) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
