package benchmarks

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/internal/lbtest"
	"github.com/tunnel-project/tunnel/tunnel"
)

// TestHAFleet measures high availability with a fleet: three server
// replicas behind a round-robin balancer and -ha-agents agents, all in
// this process. It prints how long the fleet takes to hold a session to
// every replica and how many handshakes that costs, then restarts one
// replica on the same address and prints how long the fleet takes to
// return to it, and how many probes the other two answered meanwhile. It
// does so three ways: the replicas advertise no address (agents find them
// by probing the balancer); each advertises its own (agents find a lost
// one there again); each also knows the others' (as with Leases: agents
// connect to every replica directly). `make test` runs it small; `make
// bench-ha` runs a fleet with the production probe interval.
func TestHAFleet(t *testing.T) {
	for _, m := range []haMode{probeOnly, ownAddress, peerAddresses} {
		t.Run(m.String(), func(t *testing.T) { haFleet(t, m) })
	}
}

// haMode is what the replicas of TestHAFleet know of addresses.
type haMode int

const (
	probeOnly     haMode = iota // no --advertise-address
	ownAddress                  // --advertise-address, with --server-count
	peerAddresses               // --advertise-address, with --replica-leases
)

func (m haMode) String() string {
	return [...]string{"probe-only", "own-address", "peer-addresses"}[m]
}

// peerSet is the replica set of peerAddresses: a fixed count that knows
// every replica's address, as Leases do.
type peerSet struct {
	tunnel.FixedReplicas
	addrs map[string]string
}

func (p peerSet) Addresses() map[string]string { return maps.Clone(p.addrs) }

var (
	haAgents = flag.Int("ha-agents", 30, "TestHAFleet: agents")
	haProbe  = flag.Duration("ha-probe", 200*time.Millisecond, "TestHAFleet: the agents' probe interval (tunnel-agent --probe-interval)")
	haWithin = flag.Duration("ha-timeout", 2*time.Minute, "TestHAFleet: bound on each phase")
)

const (
	haReplicas      = 3
	redundantMetric = "tunnel_server_agent_redundant_connections_total"
)

// haServer is one replica of the fleet test and its metrics.
type haServer struct {
	srv  *tunnel.Server
	reg  *prometheus.Registry
	addr string
}

func haFleet(t *testing.T, mode haMode) {
	dir := t.TempDir()
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(dir, "pki")})
	if err != nil {
		t.Fatal(err)
	}
	// The replicas' listeners first: peerAddresses needs every address
	// before any replica starts.
	lns := make([]net.Listener, haReplicas)
	addrs := make([]string, haReplicas)
	set := peerSet{FixedReplicas: haReplicas, addrs: map[string]string{}}
	for i := range lns {
		if lns[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		addrs[i] = lns[i].Addr().String()
		set.addrs[haID(i)] = addrs[i]
	}
	var replicas tunnel.Replicas = tunnel.FixedReplicas(haReplicas)
	if mode == peerAddresses {
		replicas = set
	}
	servers := make([]haServer, haReplicas)
	for i := range servers {
		servers[i] = startHAServer(t, files, haID(i), lns[i], replicas, mode != probeOnly)
	}
	lb, err := lbtest.Start(addrs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })

	agents := startHAAgents(t, files, lb.Addr())
	start := time.Now()
	waitHA(t, "every agent to hold every replica", agents, func() bool { return fleetHolds(agents, haReplicas) })
	converge := time.Since(start)
	handshakes := 0.0
	for _, s := range servers {
		handshakes += s.counter(t, "tunnel_server_agent_registrations_total") + s.counter(t, redundantMetric)
	}

	probed := func() float64 { return servers[0].counter(t, redundantMetric) + servers[1].counter(t, redundantMetric) }
	before := probed()
	servers[2].srv.Close()
	waitHA(t, "the agents to notice s3 went", agents, func() bool { return fleetHolds(agents, haReplicas-1) })
	restart := time.Now()
	ln, err := net.Listen("tcp", servers[2].addr)
	if err != nil {
		t.Fatal(err)
	}
	servers[2] = startHAServer(t, files, haID(2), ln, replicas, mode != probeOnly)
	waitHA(t, "the agents to return to s3", agents, func() bool {
		return fleetHolds(agents, haReplicas) && servers[2].srv.Agents() == len(agents)
	})
	back := time.Since(restart)
	probes := probed() - before

	t.Logf("%d agents, %d replicas, probe interval %s, %s:", len(agents), haReplicas, *haProbe, mode)
	t.Logf("  every agent holds every replica after %s; %.0f handshakes, %.2f per agent-replica",
		converge.Round(time.Millisecond), handshakes, handshakes/float64(len(agents)*haReplicas))
	t.Logf("  one replica restarted: every agent back after %s; %.0f probes answered by the other two meanwhile",
		back.Round(time.Millisecond), probes)
}

func haID(i int) string { return fmt.Sprintf("s%d", i+1) }

// startHAServer starts replica id serving agents on ln.
func startHAServer(t *testing.T, files certs.Files, id string, ln net.Listener, replicas tunnel.Replicas, advertise bool) haServer {
	cfg, err := serverConfig(files)
	if err != nil {
		t.Fatal(err)
	}
	s := haServer{reg: prometheus.NewRegistry(), addr: ln.Addr().String()}
	cfg.ID, cfg.Replicas, cfg.Registerer = id, replicas, s.reg
	if advertise {
		cfg.AdvertiseAddress = s.addr
	}
	if s.srv, err = tunnel.NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.srv.ServeAgents(ln) }()
	t.Cleanup(func() {
		s.srv.Close()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return s
}

// startHAAgents starts -ha-agents agents, each with its own certificate,
// connecting through addr.
func startHAAgents(t *testing.T, files certs.Files, addr string) []*tunnel.Agent {
	nodes := make([]certs.Node, *haAgents)
	for i := range nodes {
		nodes[i].Name = fleetNode(i)
	}
	ids, err := certs.IssueAgents(files.CACert, files.CAKey, nodes)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := certs.LoadPool(files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, len(nodes))
	t.Cleanup(func() {
		cancel()
		for range nodes {
			<-done
		}
	})
	agents := make([]*tunnel.Agent, len(nodes))
	for i, id := range ids {
		cfg := tunnel.DefaultAgentConfig()
		cfg.ServerAddress = addr
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{id}, RootCAs: pool, ServerName: "localhost"}
		cfg.NodeName = nodes[i].Name
		cfg.ProbeInterval = *haProbe
		cfg.DrainTimeout = time.Millisecond
		if agents[i], err = tunnel.NewAgent(cfg); err != nil {
			t.Fatal(err)
		}
		go func() { agents[i].Run(ctx); done <- struct{}{} }()
	}
	return agents
}

// fleetHolds reports whether every agent holds exactly n replicas.
func fleetHolds(agents []*tunnel.Agent, n int) bool {
	for _, a := range agents {
		if held, _ := a.Servers(); held != n {
			return false
		}
	}
	return true
}

// waitHA polls cond for up to -ha-timeout, logging every 10s how many
// agents hold how many replicas.
func waitHA(t *testing.T, what string, agents []*tunnel.Agent, cond func() bool) {
	t.Helper()
	start := time.Now()
	report := start.Add(10 * time.Second)
	for !cond() {
		if now := time.Now(); now.After(report) {
			t.Logf("%s: waiting for %s; agents by replicas held: %v", now.Sub(start).Round(time.Second), what, heldHistogram(agents))
			report = now.Add(10 * time.Second)
		}
		if time.Since(start) > *haWithin {
			t.Fatalf("timed out after %s waiting for %s; agents by replicas held: %v", *haWithin, what, heldHistogram(agents))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// heldHistogram counts the agents by the number of replicas they hold.
func heldHistogram(agents []*tunnel.Agent) [haReplicas + 1]int {
	var h [haReplicas + 1]int
	for _, a := range agents {
		held, _ := a.Servers()
		h[min(held, haReplicas)]++
	}
	return h
}

// counter reads an unlabelled counter of s's registry.
func (s haServer) counter(t *testing.T, name string) float64 {
	t.Helper()
	families, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}
