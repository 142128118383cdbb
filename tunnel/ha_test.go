package tunnel

import (
	"maps"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-project/tunnel/internal/lbtest"
)

// startBalancer starts a load balancer over the replicas' agent addresses.
func startBalancer(t *testing.T, backends ...string) *lbtest.Balancer {
	b, err := lbtest.Start(backends...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// replicaSet is a replica count a test changes (Replicas), and the
// replicas' addresses.
type replicaSet struct {
	mu     sync.Mutex
	n      int
	addrs  map[string]string
	notify []func()
}

func (r *replicaSet) Addresses() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.addrs)
}

func (r *replicaSet) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func (r *replicaSet) Notify(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notify = append(r.notify, f)
}

func (r *replicaSet) set(n int) {
	r.mu.Lock()
	r.n = n
	subs := r.notify
	r.mu.Unlock()
	for _, f := range subs {
		f()
	}
}

// haReplica is one server replica of an HA test and its metrics.
type haReplica struct {
	*harness
	reg *prometheus.Registry
}

// startReplica starts replica id of h's server (the first if h is nil), on
// agentAddr if not empty; it advertises its address if advertise is set.
func startReplica(t *testing.T, h *harness, id string, replicas Replicas, agentAddr string, advertise bool) haReplica {
	reg := prometheus.NewRegistry()
	mod := func(c *ServerConfig) {
		c.ID, c.Replicas, c.Registerer = id, replicas, reg
		if advertise {
			c.AdvertiseAddress = advertiseSelf
		}
	}
	if h == nil {
		return haReplica{newHarness(t, mod), reg}
	}
	return haReplica{h.replica(mod, agentAddr), reg}
}

// haAgentConfig is an agent of node that reaches the replicas through lb
// and looks for missing ones every 50ms or so.
func haAgentConfig(h *harness, node string, lb *lbtest.Balancer) AgentConfig {
	cfg := h.agentConfig(node)
	cfg.ServerAddress = lb.Addr()
	cfg.ProbeInterval = 50 * time.Millisecond
	return cfg
}

// holdsAll reports whether every agent holds a session to want replicas
// and every replica has every agent.
func holdsAll(agents []*runningAgent, replicas []haReplica, want int) func() bool {
	return func() bool {
		for _, a := range agents {
			if held, w := a.Servers(); held != want || w != want {
				return false
			}
		}
		for _, r := range replicas {
			if r.srv.Agents() != len(agents) {
				return false
			}
		}
		return true
	}
}

// TestHAAgentsHoldEveryReplica: three replicas behind one balancer; each
// agent ends up with a session to each — without one replica's session
// replacing another's — so a dial through any replica reaches any node.
// One replica goes away mid-traffic: tunnels and dials through the others
// go on, and the agents return to it when it comes back.
func TestHAAgentsHoldEveryReplica(t *testing.T) {
	r1 := startReplica(t, nil, "s1", FixedReplicas(3), "", false)
	r2 := startReplica(t, r1.harness, "s2", FixedReplicas(3), "", false)
	r3 := startReplica(t, r1.harness, "s3", FixedReplicas(3), "", false)
	replicas := []haReplica{r1, r2, r3}
	lb := startBalancer(t, r1.agentAddr, r2.agentAddr, r3.agentAddr)
	var agents []*runningAgent
	agentReg := prometheus.NewRegistry()
	for _, node := range []string{"node-a", "node-b"} {
		cfg := haAgentConfig(r1.harness, node, lb)
		if node == "node-a" {
			cfg.Registerer = agentReg
		}
		agents = append(agents, r1.runAgent(cfg))
	}
	waitFor(t, "every agent to hold every replica", holdsAll(agents, replicas, 3))
	for _, r := range replicas {
		expectMetric(t, r.reg, eq(2), "tunnel_server_agent_registrations_total")
		expectMetric(t, r.reg, eq(3), "tunnel_server_replicas")
		expectMetric(t, r.reg, eq(2), "tunnel_server_nodes_with_agent")
	}

	echoA := startEcho(t, "127.0.0.1:0") // node-a's IP
	echoB := startEcho(t, "127.0.0.2:0") // node-b's IP
	for _, r := range replicas {
		for _, dest := range []string{echoA, echoB} {
			c := r.mustConnect(dest)
			if err := echoCheck(c, 64<<10); err != nil {
				t.Fatalf("through %s to %s: %v", r.srv.ID(), dest, err)
			}
			c.Close()
		}
	}

	// Tunnels open through every replica when s3 goes.
	open := map[string]net.Conn{}
	for _, r := range replicas {
		open[r.srv.ID()] = r.mustConnect(echoA)
	}
	r3.srv.Close()
	waitFor(t, "the agents to notice s3 is gone", func() bool {
		for _, a := range agents {
			if held, want := a.Servers(); held != 2 || want != 3 {
				return false
			}
		}
		return true
	})
	if err := echoCheck(open["s3"], 1); err == nil {
		t.Fatal("a tunnel through the closed replica still works")
	}
	for _, r := range replicas[:2] {
		if err := echoCheck(open[r.srv.ID()], 256<<10); err != nil {
			t.Fatalf("tunnel open through %s when s3 went: %v", r.srv.ID(), err)
		}
		for _, dest := range []string{echoA, echoB} {
			c := r.mustConnect(dest)
			if err := echoCheck(c, 64<<10); err != nil {
				t.Fatalf("through %s to %s after s3 went: %v", r.srv.ID(), dest, err)
			}
			c.Close()
		}
	}

	// s3 comes back (on another port: the balancer is told).
	r3 = startReplica(t, r1.harness, "s3", FixedReplicas(3), "", false)
	lb.Set(2, r3.agentAddr)
	replicas[2] = r3
	waitFor(t, "the agents to return to s3", holdsAll(agents, replicas, 3))
	c := r3.mustConnect(echoB)
	if err := echoCheck(c, 64<<10); err != nil {
		t.Fatalf("through the restarted s3: %v", err)
	}
	// The survivors kept their sessions all along: probing them registered
	// nothing new and replaced nothing.
	for _, r := range replicas[:2] {
		expectMetric(t, r.reg, eq(2), "tunnel_server_agent_registrations_total")
		expectMetric(t, r.reg, ge(1), "tunnel_server_agent_redundant_connections_total")
	}
	expectMetric(t, agentReg, eq(3), "tunnel_agent_servers_connected")
	expectMetric(t, agentReg, eq(3), "tunnel_agent_servers_expected")
}

// TestHAReplicaCountFollowed: when the replica count grows, registered
// agents are told on their control stream and look for the new replica;
// when it shrinks they stop looking.
func TestHAReplicaCountFollowed(t *testing.T) {
	count := &replicaSet{n: 1}
	r1 := startReplica(t, nil, "s1", count, "", false)
	lb := startBalancer(t, r1.agentAddr)
	agent := r1.runAgent(haAgentConfig(r1.harness, "node-a", lb))
	waitFor(t, "the agent to hold s1", holdsAll([]*runningAgent{agent}, []haReplica{r1}, 1))

	r2 := startReplica(t, r1.harness, "s2", count, "", false)
	lb.Set(0, r2.agentAddr) // new connections reach s2 only
	count.set(2)
	waitFor(t, "the agent to hold s1 and s2", holdsAll([]*runningAgent{agent}, []haReplica{r1, r2}, 2))

	count.set(1)
	r2.srv.Close()
	waitFor(t, "the agent to want one replica", func() bool { held, want := agent.Servers(); return held == 1 && want == 1 })
	expectMetric(t, r1.reg, eq(1), "tunnel_server_agent_registrations_total")
}

// TestHAAdvertisedAddress: a replica that advertises its address is found
// there again when it restarts, even by agents whose balancer no longer
// reaches it; one that never comes back is forgotten, and the agents find
// its successor through the balancer.
func TestHAAdvertisedAddress(t *testing.T) {
	r1 := startReplica(t, nil, "s1", FixedReplicas(2), "", true)
	r2 := startReplica(t, r1.harness, "s2", FixedReplicas(2), "", true)
	lb := startBalancer(t, r1.agentAddr, r2.agentAddr)
	cfg := haAgentConfig(r1.harness, "node-a", lb)
	cfg.MaxBackoff = time.Second // the lost address is kept for a second or two of failures
	agents := []*runningAgent{r1.runAgent(cfg)}
	waitFor(t, "the agent to hold both replicas", holdsAll(agents, []haReplica{r1, r2}, 2))

	lb.Set(1, r1.agentAddr) // the balancer reaches s1 only from now on
	r2.srv.Close()
	r2 = startReplica(t, r1.harness, "s2", FixedReplicas(2), r2.agentAddr, true)
	waitFor(t, "the agent to find s2 at its address", holdsAll(agents, []haReplica{r1, r2}, 2))

	r2.srv.Close() // for good; its successor has another ID and address
	r3 := startReplica(t, r1.harness, "s3", FixedReplicas(2), "", true)
	lb.Set(1, r3.agentAddr)
	waitFor(t, "the agent to find s3 through the balancer", holdsAll(agents, []haReplica{r1, r3}, 2))
	expectMetric(t, r1.reg, eq(1), "tunnel_server_agent_registrations_total")
}

// TestHAAddressOfAnotherReplicaForgotten: an advertised address at which
// another replica answers (a misconfigured --advertise-address) is
// forgotten at the first such answer, not retried in a loop.
func TestHAAddressOfAnotherReplicaForgotten(t *testing.T) {
	r1 := startReplica(t, nil, "s1", FixedReplicas(2), "", true)
	r2 := haReplica{r1.replica(func(c *ServerConfig) {
		c.ID, c.Replicas, c.AdvertiseAddress = "s2", FixedReplicas(2), r1.agentAddr
	}, ""), nil}
	lb := startBalancer(t, r1.agentAddr, r2.agentAddr)
	agent := r1.runAgent(haAgentConfig(r1.harness, "node-a", lb))
	waitFor(t, "the agent to hold both replicas", holdsAll([]*runningAgent{agent}, []haReplica{r1, r2}, 2))

	lb.Set(1, r1.agentAddr)
	r2.srv.Close()
	waitFor(t, "s2's address (really s1's) to be forgotten", func() bool {
		agent.mu.Lock()
		defer agent.mu.Unlock()
		_, known := agent.addrs["s2"]
		return !known
	})
	expectMetric(t, r1.reg, eq(1), "tunnel_server_agent_registrations_total")
	if n, _ := metricValue(t, r1.reg, "tunnel_server_agent_redundant_connections_total"); n > 3 {
		t.Fatalf("s1 answered %v connections meant for s2's address", n)
	}
}

// TestHAPeerAddresses: replicas that know each other's addresses (Leases)
// hand them to agents, which connect to each directly: they need no probe
// through a balancer that reaches one replica only.
func TestHAPeerAddresses(t *testing.T) {
	set := &replicaSet{n: 3}
	r1 := startReplica(t, nil, "s1", set, "", true)
	r2 := startReplica(t, r1.harness, "s2", set, "", true)
	r3 := startReplica(t, r1.harness, "s3", set, "", true)
	set.addrs = map[string]string{"s1": r1.agentAddr, "s2": r2.agentAddr, "s3": r3.agentAddr}
	lb := startBalancer(t, r1.agentAddr)
	cfg := haAgentConfig(r1.harness, "node-a", lb)
	cfg.ProbeInterval = time.Hour
	agent := r1.runAgent(cfg)
	waitFor(t, "the agent to hold every replica", holdsAll([]*runningAgent{agent}, []haReplica{r1, r2, r3}, 3))
	for _, r := range []haReplica{r2, r3} {
		expectMetric(t, r.reg, eq(0), "tunnel_server_agent_redundant_connections_total")
	}
}
