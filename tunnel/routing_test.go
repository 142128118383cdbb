package tunnel

import (
	"fmt"
	"net/netip"
	"testing"
)

func testAgent(node string, ips []string, cidrs []string, def bool) *agentConn {
	a := &agentConn{node: node, defaultRoute: def}
	for _, ip := range ips {
		a.ips = append(a.ips, netip.MustParseAddr(ip))
	}
	for _, p := range cidrs {
		a.cidrs = append(a.cidrs, netip.MustParsePrefix(p))
	}
	return a
}

func TestRoutesLookup(t *testing.T) {
	r := newRoutes()
	a := testAgent("node-a", []string{"10.0.0.5", "fd00::5"}, []string{"10.244.1.0/24"}, false)
	b := testAgent("node-b", []string{"10.0.0.6"}, []string{"10.244.0.0/16", "fd00:244::/64"}, false)
	c := testAgent("node-c", nil, nil, true)
	for _, x := range []*agentConn{a, b, c} {
		r.add(x)
	}
	for _, tc := range []struct {
		host string
		want *agentConn
	}{
		{"10.0.0.5", a},
		{"node-a", a},
		{"Node-A", a},
		{"fd00::5", a},
		{"::ffff:10.0.0.5", a}, // IPv4-mapped form of a node IP
		{"10.0.0.6", b},
		{"10.244.1.77", a}, // the longest prefix wins
		{"10.244.2.77", b}, // only the /16 matches
		{"fd00:244::9", b}, // IPv6 prefix
		{"10.96.0.1", c},   // a service IP: default route
		{"kubernetes", c},  // an unknown name: default route
		{"fd00:245::1", c}, // outside every IPv6 prefix
		{"node-a.example", c},
	} {
		if got := r.lookup(tc.host); got != tc.want {
			t.Errorf("lookup(%q) = %v, want %v", tc.host, name(got), name(tc.want))
		}
	}

	r.remove(c)
	if got := r.lookup("10.96.0.1"); got != nil {
		t.Errorf("after removing the default agent: got %v", name(got))
	}
	r.remove(a)
	if got := r.lookup("10.244.1.77"); got != b {
		t.Errorf("after removing node-a: got %v, want node-b by its /16", name(got))
	}
	if got := r.lookup("node-a"); got != nil {
		t.Errorf("removed node still routed to %v", name(got))
	}
}

func TestRoutesNewestWinsAndLoadSpreads(t *testing.T) {
	r := newRoutes()
	old := testAgent("node-a", []string{"10.0.0.5"}, nil, false)
	young := testAgent("node-a", []string{"10.0.0.5"}, nil, false)
	r.add(old)
	r.add(young)
	if r.lookup("10.0.0.5") != young || r.lookup("node-a") != young {
		t.Fatal("the newest agent of a node must win")
	}
	r.remove(young)
	if r.lookup("10.0.0.5") != old {
		t.Fatal("the older agent must take over when the newest leaves")
	}

	d1, d2 := testAgent("gw-1", nil, nil, true), testAgent("gw-2", nil, nil, true)
	r.add(d1)
	r.add(d2)
	d2.streams.Store(5)
	if got := r.lookup("10.96.0.1"); got != d1 {
		t.Fatalf("default route picked %v, want the least loaded gw-1", name(got))
	}
}

// TestRoutesTakeOverOnlyOlder: a session's takeOver retires the sessions
// of its node that registered before it, never one that registered after,
// however late it runs.
func TestRoutesTakeOverOnlyOlder(t *testing.T) {
	r := newRoutes()
	first := testAgent("node-a", []string{"10.0.0.5"}, nil, false)
	second := testAgent("node-a", []string{"10.0.0.5"}, nil, false)
	r.add(first)
	r.add(second)
	if old := r.takeOver(first); len(old) != 0 {
		t.Fatalf("the first session's late takeOver returned %d sessions", len(old))
	}
	if r.lookup("node-a") != second || r.lookup("10.0.0.5") != second {
		t.Fatal("the newer session lost its routes to the older one's takeOver")
	}
	if old := r.takeOver(second); len(old) != 1 || old[0] != first {
		t.Fatalf("the second session's takeOver returned %v, want the first", old)
	}
	r.remove(second)
	if got := r.lookup("node-a"); got != nil {
		t.Fatalf("the first session is still routed after its takeOver: %v", name(got))
	}
	if old := r.takeOver(first); old != nil {
		t.Fatal("takeOver of a session out of routing returned sessions")
	}
}

func TestRoutesLookupAllocatesNothing(t *testing.T) {
	r := newRoutes()
	for i := range 1000 {
		r.add(testAgent(fmt.Sprintf("node-%d", i), []string{fmt.Sprintf("10.0.%d.%d", i/256, i%256)},
			[]string{fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256)}, false))
	}
	r.add(testAgent("gw", nil, nil, true))
	for _, host := range []string{"10.0.3.7", "node-999", "10.103.231.9", "10.96.0.1", "fd00::1", "svc.cluster.local"} {
		if n := testing.AllocsPerRun(100, func() { r.lookup(host) }); n != 0 {
			t.Errorf("lookup(%q) allocates %.0f times", host, n)
		}
	}
}

func BenchmarkRoutesLookup(b *testing.B) {
	r := newRoutes()
	for i := range 5000 {
		r.add(testAgent(fmt.Sprintf("node-%d", i), []string{fmt.Sprintf("10.0.%d.%d", i/256, i%256)},
			[]string{fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256)}, false))
	}
	r.add(testAgent("gw", nil, nil, true))
	for _, host := range []string{"10.0.3.7", "node-4999", "10.115.100.9", "10.96.0.1"} {
		b.Run(host, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r.lookup(host)
			}
		})
	}
}

func name(a *agentConn) string {
	if a == nil {
		return "<nil>"
	}
	return a.node
}
