//go:build linux

package process

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
)

// netnsTopology is the network of TestNetnsTunnelReachesIsolatedTarget: a
// server namespace and a node namespace joined by a veth pair on a /30, and
// a target address that exists only on the node namespace's lo, so nothing
// outside the node namespace has a route to it.
type netnsTopology struct {
	srvNS, nodeNS     string
	srvVeth, nodeVeth string
	srvIP, nodeIP     netip.Addr // the two ends of the /30
	targetIP          netip.Addr // a /32 on the node namespace's lo
}

// newNetnsTopology derives unique names and a per-PID block of 16 addresses
// inside 198.18.0.0/15 (RFC 2544 benchmarking: never routed on a real
// network).
func newNetnsTopology(pid int) netnsTopology {
	base := netip.MustParseAddr("198.18.0.0").As4()
	off := uint32(pid%8192) * 16 // 8192 blocks of 16 fill the /15
	block := uint32(base[0])<<24 | uint32(base[1])<<16 | off
	at := func(i uint32) netip.Addr {
		v := block + i
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return netnsTopology{
		srvNS: fmt.Sprintf("tnl-srv-%d", pid), nodeNS: fmt.Sprintf("tnl-node-%d", pid),
		srvVeth: fmt.Sprintf("tnls%d", pid), nodeVeth: fmt.Sprintf("tnln%d", pid),
		srvIP: at(1), nodeIP: at(2), targetIP: at(9),
	}
}

// inNS returns the argv prefix that runs a command inside ns.
func inNS(ns string) []string { return []string{"ip", "netns", "exec", ns} }

// setup creates the namespaces, the veth pair and the addresses; cleanup
// removes them, even when setup fails half way.
func (n netnsTopology) setup(t *testing.T) {
	t.Helper()
	n.addNamespaces(t)
	mustRun(t, "ip", "link", "add", n.srvVeth, "type", "veth", "peer", "name", n.nodeVeth)
	// Once moved, deleting the namespaces deletes the pair; this catches a
	// failure before the move.
	t.Cleanup(func() { runCommand(t, nil, "ip", "link", "del", n.srvVeth) })
	n.addLink(t)
}

// addNamespaces creates the two namespaces (skipping the test if it
// cannot), with cleanups that delete them.
func (n netnsTopology) addNamespaces(t *testing.T) {
	t.Helper()
	for _, ns := range []string{n.srvNS, n.nodeNS} {
		runCommand(t, nil, "ip", "netns", "del", ns) // a leftover of a crashed run with this PID
		if out, code := runCommand(t, nil, "ip", "netns", "add", ns); code != 0 {
			t.Skipf("cannot create network namespace %s (needs CAP_SYS_ADMIN): %s", ns, out)
		}
		t.Cleanup(func() {
			if out, code := runCommand(t, nil, "ip", "netns", "del", ns); code != 0 {
				t.Errorf("ip netns del %s: %s", ns, out)
			}
		})
	}
}

// addLink moves the link's two ends, srvVeth and nodeVeth (a veth pair or
// two TUN devices), from this namespace into theirs, addresses them and
// brings them up, and puts the target address on the node namespace's lo.
func (n netnsTopology) addLink(t *testing.T) {
	t.Helper()
	mustRun(t, "ip", "link", "set", n.srvVeth, "netns", n.srvNS)
	mustRun(t, "ip", "link", "set", n.nodeVeth, "netns", n.nodeNS)
	for _, side := range []struct {
		ns, veth string
		ip       netip.Addr
	}{{n.srvNS, n.srvVeth, n.srvIP}, {n.nodeNS, n.nodeVeth, n.nodeIP}} {
		ip := append(inNS(side.ns), "ip")
		mustRun(t, append(ip, "link", "set", "lo", "up")...)
		mustRun(t, append(ip, "addr", "add", side.ip.String()+"/30", "dev", side.veth)...)
		mustRun(t, append(ip, "link", "set", side.veth, "up")...)
	}
	mustRun(t, append(inNS(n.nodeNS), "ip", "addr", "add", n.targetIP.String()+"/32", "dev", "lo")...)
}

// dialFrom runs the dial helper inside ns and reports whether it connected.
func dialFrom(t *testing.T, ns, addr string) (bool, string) {
	t.Helper()
	argv := append(inNS(ns), testBinary(t))
	out, code := runCommand(t, helperEnv("dial", addr), argv...)
	switch code {
	case helperDialOK:
		return true, out
	case helperDialFailed:
		return false, out
	}
	t.Fatalf("dial helper in %s exited %d:\n%s", ns, code, out)
	return false, ""
}

// TestNetnsTunnelReachesIsolatedTarget puts tunnel-server and tunnel-agent in
// separate network namespaces with a target only the node namespace can
// reach, and proves the CONNECT frontend reaches it through the tunnel.
func TestNetnsTunnelReachesIsolatedTarget(t *testing.T) {
	needNetns(t)
	n := newNetnsTopology(os.Getpid())
	n.setup(t)

	// The echo target: this test binary re-executed in the node namespace,
	// bound to the address only that namespace has.
	targetAddr := startNetnsHelper(t, n, "echo")

	if ok, out := dialFrom(t, n.nodeNS, targetAddr); !ok {
		t.Fatalf("control: the target is not reachable even inside its own namespace: %s", out)
	}
	if ok, out := dialFrom(t, n.srvNS, targetAddr); ok {
		t.Fatalf("the target %s is reachable from the server namespace directly; the test proves nothing: %s", targetAddr, out)
	} else {
		t.Logf("direct dial from %s: %s", n.srvNS, out)
	}

	cs := newCerts(t, []string{n.srvIP.String()}, nodeA+"="+n.targetIP.String())
	srv := startServer(t, cs, serverOpts{listenHost: n.srvIP.String(), wrap: inNS(n.srvNS)})
	startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{n.targetIP.String()}, wrap: inNS(n.nodeNS)})

	dial := udsDialer(srv.udsPath) // the socket file is on the shared filesystem
	for via, dest := range map[string]string{"node IP": targetAddr, "node name": withHost(nodeA, targetAddr)} {
		t.Run("via "+via, func(t *testing.T) {
			t.Run("echo 4MiB", func(t *testing.T) {
				checkEcho(t, mustConnect(t, dial, dest), 4<<20)
			})
			t.Run("echo 1MiB then half-close", func(t *testing.T) {
				checkHalfClose(t, mustConnect(t, dial, dest), 1<<20)
			})
		})
	}
}
