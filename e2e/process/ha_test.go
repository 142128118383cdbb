//go:build linux

package process

// High availability (README, "High availability") with real processes:
// three tunnel-server replicas behind one agent address, a round-robin TCP
// load balancer in this process, and three agents that each hold a session
// to every replica. One replica is killed (SIGKILL) under traffic through
// the other two and started again on the same ports.

import (
	"fmt"
	"io"
	"net"
	"regexp"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The replica set of TestHAThreeServers and its bounds.
const (
	haReplicas = 3
	haProbe    = 200 * time.Millisecond // the agents' --probe-interval
	// haReturnBound is how long the agents may take to hold a session to
	// a restarted replica again. An agent probes every 0.1–0.3 s and the
	// load balancer sends one connection in three to the restarted
	// replica, so the bound is some fifty probes per agent.
	haReturnBound = 10 * time.Second
	haDialBytes   = 16 << 10 // echoed on each short-lived tunnel of the load
	haChunk       = 16 << 10 // echoed per round trip on a long-lived tunnel
)

// haNodes are the agents' nodes, each with a loopback address of its own
// (process_test.go): a target bound to one is reached only through that
// node's agent.
var haNodes = []struct{ name, ip string }{
	{"ha-node-1", "127.0.0.31"}, {"ha-node-2", "127.0.0.32"}, {"ha-node-3", "127.0.0.33"},
}

// replica is one tunnel-server of the set.
type replica struct {
	*server
	id string
}

// haAgent is a running tunnel-agent and its admin address.
type haAgent struct {
	*proc
	admin string
}

// haTarget is a node's echo target, as a CONNECT destination by node name.
type haTarget struct{ node, dest string }

// TestHAThreeServers: every agent holds a session to each of three
// replicas and every replica reaches every node. Replica s3 is killed while
// short-lived tunnels and long-lived streams run through s1 and s2: not one
// of them may fail, the tunnel through s3 ends, and the agents hold two
// replicas of three. Started again with the same ID and ports, s3 gets
// every agent back within haReturnBound and carries tunnels again, while
// s1 and s2 never registered an agent anew. The return time and the
// replicas' counters are logged.
func TestHAThreeServers(t *testing.T) {
	t.Parallel()
	h := startHASet(t)
	survivors := h.reps[:2]
	before := expectReplicaCounters(t, survivors, len(h.agents))
	load := startHALoad(t, survivors, h.targets)
	load.waitProgress(t, startTimeout)

	killed := h.killLast(t)
	waitProbes(t, survivors, before, 2*len(h.agents), h.lb, 2)
	t.Logf("the agents' probes found only replicas they hold for %s", time.Since(killed).Round(time.Millisecond))
	load.waitProgress(t, startTimeout)
	h.restartLast(t, killed)
	load.waitProgress(t, startTimeout)
	load.halt()
	load.expectNoFailures(t)

	for _, tg := range h.targets {
		echoOnce(t, h.reps[2], tg)
	}
	checkSurvivorCounters(t, survivors, before, len(h.agents))
	expectReplicaCounters(t, h.reps[2:], len(h.agents))
	t.Logf("load balancer: %s", h.lb)
	expectNoStreams(t, h.reps, h.agents)
}

// haSet is the replica set, its load balancer, and the agents and targets.
type haSet struct {
	cs      *certSet
	reps    []*replica
	lb      *roundRobin
	agents  []haAgent
	targets []haTarget
}

// startHASet starts the replicas, the load balancer and an agent and echo
// target per node, waits until every agent holds every replica, and proves
// each replica reaches each node.
func startHASet(t *testing.T) *haSet {
	t.Helper()
	var specs []string
	for _, n := range haNodes {
		specs = append(specs, n.name+"="+n.ip)
	}
	h := &haSet{cs: newCerts(t, nil, specs...)}
	var backends []string
	for i := range haReplicas {
		h.reps = append(h.reps, startReplica(t, h.cs, fmt.Sprintf("s%d", i+1), nil))
		backends = append(backends, h.reps[i].agentAddr)
	}
	h.lb = startRoundRobin(t, backends)
	h.agents, h.targets = startHAAgents(t, h.cs, h.lb.addr)
	took := waitHA(t, h.reps, h.agents, haReplicas, startTimeout)
	t.Logf("every agent holds a session to each of %d replicas %s after the last agent started", haReplicas, took.Round(time.Millisecond))
	for _, r := range h.reps {
		for _, tg := range h.targets {
			echoOnce(t, r, tg)
		}
	}
	return h
}

// killLast kills the last replica (SIGKILL) with a stream open through it,
// requires the stream to end and every agent to hold the others, and
// returns when it sent the signal.
func (h *haSet) killLast(t *testing.T) time.Time {
	t.Helper()
	r := h.reps[len(h.reps)-1]
	doomed := startHALoad(t, nil, nil)
	doomed.stream(t, r, h.targets[0])
	doomed.waitProgress(t, startTimeout)
	killed := time.Now()
	r.signal(t, syscall.SIGKILL)
	r.waitExit(t, stopTimeout)
	doomed.expectEnded(t, killed)
	waitHA(t, h.reps[:len(h.reps)-1], h.agents, haReplicas-1, closeBound)
	t.Logf("every agent holds %d replicas of %d %s after the SIGKILL of %s",
		haReplicas-1, haReplicas, time.Since(killed).Round(time.Millisecond), r.id)
	return killed
}

// restartLast starts the killed last replica again and waits until every
// agent holds it again, logging how long that took.
func (h *haSet) restartLast(t *testing.T, killed time.Time) {
	t.Helper()
	i := len(h.reps) - 1
	r := startReplica(t, h.cs, h.reps[i].id, h.reps[i])
	h.reps[i] = r
	up := logTime(t, listeningLine(t, r.out.String(), "agent"))
	waitHA(t, h.reps, h.agents, haReplicas, haReturnBound)
	t.Logf("%s listening again %s after the SIGKILL; every agent holds it again at most %s after that",
		r.id, up.Sub(killed).Round(time.Millisecond), time.Since(up).Round(time.Millisecond))
	logReturns(t, h.agents, r.id, up)
}

// echoOnce opens a tunnel through r to tg, echoes 64 KiB and closes it.
func echoOnce(t *testing.T, r *replica, tg haTarget) {
	t.Helper()
	c := mustConnect(t, udsDialer(r.udsPath), tg.dest)
	defer c.Close()
	checkEcho(t, c, 64<<10)
}

// haServerFlags are a replica's flags besides startServer's.
func haServerFlags(id string) []string {
	return append([]string{"--server-id", id, "--server-count", fmt.Sprint(haReplicas)}, kaFlags...)
}

// startReplica starts replica id. With prev, it is prev started again: the
// same flags, agent port, admin port and unix socket (left behind by a
// SIGKILL, so the server must replace a stale socket file).
func startReplica(t *testing.T, cs *certSet, id string, prev *replica) *replica {
	t.Helper()
	if prev == nil {
		return &replica{server: startServer(t, cs, serverOpts{extra: haServerFlags(id)}), id: id}
	}
	s := startServer(t, cs, serverOpts{agentAddr: prev.agentAddr, noUDS: true,
		extra: append(haServerFlags(id), "--uds-path", prev.udsPath, "--admin-listen-address", prev.adminAddr)})
	if got := s.waitListeners(t, []string{"uds"})["uds"]; got != prev.udsPath {
		t.Fatalf("restarted %s logged uds addr %q, want %q", id, got, prev.udsPath)
	}
	if s.adminAddr != prev.adminAddr {
		t.Fatalf("restarted %s logged admin addr %q, want %q", id, s.adminAddr, prev.adminAddr)
	}
	s.udsPath = prev.udsPath
	return &replica{server: s, id: id}
}

// startHAAgents starts an echo target and an agent for every node in
// haNodes, the agents connecting to addr.
func startHAAgents(t *testing.T, cs *certSet, addr string) ([]haAgent, []haTarget) {
	t.Helper()
	viaLB := &server{certs: cs, agentAddr: addr}
	var agents []haAgent
	var targets []haTarget
	for _, n := range haNodes {
		echo := startTarget(t, n.ip, serveEcho)
		targets = append(targets, haTarget{node: n.name, dest: withHost(n.name, echo)})
		p := startAgent(t, viaLB, agentOpts{node: n.name, nodeIPs: []string{n.ip},
			extra: append([]string{"--probe-interval", haProbe.String()}, kaFlags...)})
		agents = append(agents, haAgent{proc: p, admin: p.waitLog(t, adminAddrRE, startTimeout)[1]})
	}
	return agents, targets
}

// waitHA polls until every agent holds a session to held replicas of
// haReplicas and every replica in reps has every agent registered, and
// returns how long that took.
func waitHA(t *testing.T, reps []*replica, agents []haAgent, held int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, timeout, func() (bool, string) {
		for _, a := range agents {
			ss := scrape(t, a.admin)
			got, _ := seriesValue(ss, "tunnel_agent_servers_connected")
			want, _ := seriesValue(ss, "tunnel_agent_servers_expected")
			if got != float64(held) || want != haReplicas {
				return false, fmt.Sprintf("%s: servers connected %v, expected %v; want %d and %d", a.name, got, want, held, haReplicas)
			}
		}
		for _, r := range reps {
			if ok, msg := agentsConnected(len(agents)).holds(scrape(t, r.adminAddr)); !ok {
				return false, r.id + ": " + msg
			}
		}
		return true, ""
	})
	return time.Since(start)
}

func agentsConnected(n int) seriesWant {
	return seriesWant{"tunnel_server_agents_connected", []string{"transport", "tls"}, "==", float64(n)}
}

// replicaCounters are the counters of one replica that show how agents
// came and went.
type replicaCounters struct{ registrations, redundant float64 }

// expectReplicaCounters checks that every replica in reps has n agents,
// each registered once, and reports its counters.
func expectReplicaCounters(t *testing.T, reps []*replica, n int) []replicaCounters {
	t.Helper()
	var cs []replicaCounters
	for _, r := range reps {
		ss := expectSeries(t, r.id, r.adminAddr, []seriesWant{agentsConnected(n),
			{"tunnel_server_replicas", nil, "==", haReplicas},
			{"tunnel_server_nodes_with_agent", nil, "==", float64(n)},
			{"tunnel_server_agent_registrations_total", nil, "==", float64(n)}})
		red, _ := seriesValue(ss, "tunnel_server_agent_redundant_connections_total")
		cs = append(cs, replicaCounters{registrations: float64(n), redundant: red})
		t.Logf("%s: %d agents, registrations %d, redundant connections (answered \"held\") %v", r.id, n, n, red)
	}
	return cs
}

// waitProbes waits, while backend down of lb is down, until the load
// balancer has found it refusing a connection and reps together have
// answered n more of the agents' probes "held" than they had in before.
func waitProbes(t *testing.T, reps []*replica, before []replicaCounters, n int, lb *roundRobin, down int) {
	t.Helper()
	eventually(t, startTimeout, func() (bool, string) {
		var probes float64
		for i, r := range reps {
			red, _ := seriesValue(scrape(t, r.adminAddr), "tunnel_server_agent_redundant_connections_total")
			probes += red - before[i].redundant
		}
		refused := lb.refused[down].Load()
		return probes >= float64(n) && refused > 0,
			fmt.Sprintf("%v probes answered \"held\" (want %d), %d connections refused by the killed replica's port", probes, n, refused)
	})
}

// checkSurvivorCounters requires the replicas that stayed up to still
// have their first n registrations and nothing more: no session of theirs
// was replaced.
func checkSurvivorCounters(t *testing.T, reps []*replica, before []replicaCounters, n int) {
	t.Helper()
	for i, r := range reps {
		ss := expectSeries(t, r.id, r.adminAddr, []seriesWant{agentsConnected(n)})
		reg, _ := seriesValue(ss, "tunnel_server_agent_registrations_total")
		red, _ := seriesValue(ss, "tunnel_server_agent_redundant_connections_total")
		t.Logf("%s after the outage: registrations %v (was %v), redundant connections %v (was %v)",
			r.id, reg, before[i].registrations, red, before[i].redundant)
		if reg != before[i].registrations {
			t.Errorf("%s registered agents anew (%v registrations, was %v): a session to a surviving replica was lost", r.id, reg, before[i].registrations)
		}
	}
}

// logReturns logs when each agent registered with the restarted replica
// id, measured from when it listened again (both from the processes' logs).
func logReturns(t *testing.T, agents []haAgent, id string, up time.Time) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^.*msg=registered .*server_id=` + regexp.QuoteMeta(id) + `( .*)?$`)
	for _, a := range agents {
		lines := re.FindAllString(a.out.String(), -1)
		if len(lines) == 0 {
			t.Fatalf("%s logged no registration with %s", a.name, id)
		}
		at := logTime(t, lines[len(lines)-1])
		t.Logf("%s registered with %s again %s after it listened", a.name, id, at.Sub(up).Round(time.Millisecond))
		if at.Before(up) {
			t.Errorf("%s's last registration with %s (%s) is older than the restart (%s)", a.name, id, at, up)
		}
	}
}

// expectNoStreams waits for every process to have no tunnel open, the
// agents' streams of the killed replica's session included.
func expectNoStreams(t *testing.T, reps []*replica, agents []haAgent) {
	t.Helper()
	for _, r := range reps {
		expectSeries(t, r.id, r.adminAddr, []seriesWant{{"tunnel_server_streams_open", nil, "==", 0}})
	}
	for _, a := range agents {
		expectSeries(t, a.name, a.admin, []seriesWant{{"tunnel_agent_streams_open", nil, "==", 0}})
	}
}

// ---------------------------------------------------------------------------
// The load balancer.

// roundRobin is a TCP load balancer in front of the replicas' agent ports:
// each connection goes to the next backend in turn, or, if that one refuses
// it, to the one after, as a load balancer does with a backend that is
// down. It runs as a target server (traffic_test.go) whose handler
// forwards.
type roundRobin struct {
	addr      string
	backends  []string
	next      atomic.Uint64
	forwarded []atomic.Int64 // connections carried, by backend
	refused   []atomic.Int64 // connections a backend refused
}

func startRoundRobin(t *testing.T, backends []string) *roundRobin {
	t.Helper()
	lb := &roundRobin{backends: backends,
		forwarded: make([]atomic.Int64, len(backends)), refused: make([]atomic.Int64, len(backends))}
	lb.addr = startTarget(t, "127.0.0.1", lb.forward)
	return lb
}

// forward carries c to a backend and back until either side ends it.
func (lb *roundRobin) forward(c net.Conn) {
	up := lb.dial()
	if up == nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, c)
		up.Close()
	}()
	io.Copy(c, up)
	c.Close()
	<-done
}

// dial connects to the first backend that accepts, starting with the next
// in turn; nil if none does.
func (lb *roundRobin) dial() net.Conn {
	first := lb.next.Add(1) - 1
	for i := range uint64(len(lb.backends)) {
		b := (first + i) % uint64(len(lb.backends))
		up, err := net.DialTimeout("tcp", lb.backends[b], time.Second)
		if err == nil {
			lb.forwarded[b].Add(1)
			return up
		}
		lb.refused[b].Add(1)
	}
	return nil
}

func (lb *roundRobin) String() string {
	s := ""
	for i, b := range lb.backends {
		s += fmt.Sprintf("%s carried %d connections, refused %d; ", b, lb.forwarded[i].Load(), lb.refused[i].Load())
	}
	return s
}

// ---------------------------------------------------------------------------
// Traffic through the replicas.

// haLoad is traffic that runs until halted: per replica and node a worker
// that opens a tunnel, echoes haDialBytes and closes it, again and again,
// and streams (long-lived tunnels echoing chunk after chunk). Every byte
// is compared; failures are counted, not fatal, so that all are seen.
type haLoad struct {
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	workers []*haWorker
}

// haWorker is one goroutine of a load and what it did.
type haWorker struct {
	name   string
	ok     atomic.Int64 // verified tunnels, or chunks of a stream
	failed atomic.Int64
	ended  chan struct{} // closed when the goroutine returns
	mu     sync.Mutex
	errs   []string // the first failures
}

// startHALoad starts a dialing worker per replica in reps and target, and
// one stream per replica to the first target. Cleanup halts it.
func startHALoad(t *testing.T, reps []*replica, targets []haTarget) *haLoad {
	t.Helper()
	l := &haLoad{stop: make(chan struct{})}
	t.Cleanup(l.halt)
	for _, r := range reps {
		for _, tg := range targets {
			w := l.add(fmt.Sprintf("tunnels via %s to %s", r.id, tg.node))
			go l.dialLoop(w, r.udsPath, tg.dest)
		}
		l.stream(t, r, targets[0])
	}
	return l
}

func (l *haLoad) add(name string) *haWorker {
	w := &haWorker{name: name, ended: make(chan struct{})}
	l.workers = append(l.workers, w)
	l.wg.Add(1)
	return w
}

// stream opens a tunnel through r to tg and streams echoes on it.
func (l *haLoad) stream(t *testing.T, r *replica, tg haTarget) {
	t.Helper()
	c := mustConnect(t, udsDialer(r.udsPath), tg.dest)
	go l.streamLoop(l.add(fmt.Sprintf("stream via %s to %s", r.id, tg.node)), c)
}

func (l *haLoad) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// halt stops every worker and waits for them.
func (l *haLoad) halt() {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
}

func (l *haLoad) dialLoop(w *haWorker, path, dest string) {
	defer l.wg.Done()
	defer close(w.ended)
	for !l.stopped() {
		if err := dialEcho(path, dest); err != nil {
			w.record(err)
			time.Sleep(pollInterval) // pace a worker that fails at once
			continue
		}
		w.record(nil)
	}
}

// streamLoop echoes one continuous pattern through c in chunks until the
// load halts or a chunk fails, and closes c.
func (l *haLoad) streamLoop(w *haWorker, c net.Conn) {
	defer l.wg.Done()
	defer close(w.ended)
	defer c.Close()
	src := pattern(1 << 40)
	sent, got := make([]byte, haChunk), make([]byte, haChunk)
	for !l.stopped() {
		io.ReadFull(src, sent)
		err := echoChunk(c, sent, got)
		w.record(err)
		if err != nil {
			return
		}
	}
}

// dialEcho opens a tunnel to dest through the unix socket at path and
// echoes haDialBytes through it.
func dialEcho(path, dest string) error {
	raw, err := net.DialTimeout("unix", path, connectTimeout)
	if err != nil {
		return err
	}
	defer raw.Close()
	c, status, err := request(raw, connectRequest(dest))
	if err != nil {
		return fmt.Errorf("CONNECT %s: %w", dest, err)
	}
	if statusCode(status) != 200 {
		return fmt.Errorf("CONNECT %s: %s", dest, status)
	}
	return echoVerified(c, haDialBytes, time.Now().Add(ioTimeout))
}

// echoChunk writes sent to an echo target and reads it back into got.
func echoChunk(c net.Conn, sent, got []byte) error {
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(sent); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read the echo: %w", err)
	}
	if i := mismatch(got, sent); i >= 0 {
		return fmt.Errorf("echoed byte %d differs", i)
	}
	return nil
}

func (w *haWorker) record(err error) {
	if err == nil {
		w.ok.Add(1)
		return
	}
	w.failed.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) < 5 {
		w.errs = append(w.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
	}
}

// waitProgress waits until every worker has succeeded at least twice more
// since the call.
func (l *haLoad) waitProgress(t *testing.T, timeout time.Duration) {
	t.Helper()
	from := make([]int64, len(l.workers))
	for i, w := range l.workers {
		from[i] = w.ok.Load()
	}
	eventually(t, timeout, func() (bool, string) {
		for i, w := range l.workers {
			if w.ok.Load() < from[i]+2 {
				return false, fmt.Sprintf("%s: %d successes, %d failures since the wait began (last: %v)",
					w.name, w.ok.Load()-from[i], w.failed.Load(), w.lastErr())
			}
		}
		return true, ""
	})
}

func (w *haWorker) lastErr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) == 0 {
		return "none"
	}
	return w.errs[len(w.errs)-1]
}

// expectNoFailures reports every worker's count and fails for any failure.
func (l *haLoad) expectNoFailures(t *testing.T) {
	t.Helper()
	for _, w := range l.workers {
		t.Logf("%s: %d ok, %d failed", w.name, w.ok.Load(), w.failed.Load())
		if n := w.failed.Load(); n > 0 {
			w.mu.Lock()
			t.Errorf("%s: %d failures, first: %q", w.name, n, w.errs)
			w.mu.Unlock()
		}
	}
}

// expectEnded requires the load's only worker, a stream through a killed
// replica, to end with an error within closeBound of the kill.
func (l *haLoad) expectEnded(t *testing.T, killed time.Time) {
	t.Helper()
	w := l.workers[0]
	select {
	case <-w.ended:
	case <-time.After(closeBound - time.Since(killed)):
		t.Fatalf("%s still open %s after the SIGKILL", w.name, closeBound)
	}
	if w.failed.Load() == 0 {
		t.Fatalf("%s ended without an error", w.name)
	}
	t.Logf("%s ended %s after the SIGKILL (%d chunks echoed before): %s",
		w.name, time.Since(killed).Round(time.Millisecond), w.ok.Load(), w.lastErr())
}
