//go:build linux

package kubernetes

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// netns is a network namespace made with `ip netns add`. The test process
// itself listens and dials inside it (Listen, DialContext): the socket is
// created on a thread switched into the namespace, and belongs to it for
// good; the thread switches back before it runs anything else.
type netns string

// path is the namespace's bind mount.
func (n netns) path() string { return "/run/netns/" + string(n) }

// wrap returns the argv prefix that runs a command inside n.
func (n netns) wrap(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", string(n)}, argv...)
}

// do runs fn on an OS thread switched into n. If the thread cannot be
// switched back it is never unlocked, so the runtime ends it with the
// goroutine instead of reusing it.
func (n netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(n.path())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", n, err)
			return
		}
		err = fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Listen listens on addr inside n.
func (n netns) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// DialContext dials addr from inside n; it fits http.Transport.DialContext.
func (n netns) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// topology is a cluster's network: a control-plane namespace (etcd,
// kube-apiserver, tunnel-server) and a node namespace (tunnel-agent, the
// kubelet API, pods, the service IPs the node serves), joined by a veth
// pair on a link network that carries only the agent's connection to the
// server. The node's own addresses, its pod range and the service range are
// on the node namespace's lo and are not routed from the control plane:
// kube-apiserver reaches them only through the tunnel.
//
// Every address is inside a namespace of its own, so clusters reuse the same
// addresses and fixed ports; only the names must be unique. IPv4 addresses
// come from 198.18.0.0/15 and IPv6 ones from 2001:2::/48 (RFC 2544 and 5180
// benchmarking ranges, never routed on a real network).
type topology struct {
	cp, node         netns
	cpVeth, nodeVeth string
	ipv6             bool

	cpIP, linkNodeIP netip.Addr   // the link network's two ends
	nodeIP           netip.Addr   // the node's InternalIP, on its lo
	podCIDR          netip.Prefix // the node's spec.podCIDRs[0]
	serviceCIDR      netip.Prefix // kube-apiserver --service-cluster-ip-range
}

// clusterSeq numbers the clusters of one test process.
var clusterSeq atomic.Int32

// newTopology names a fresh pair of namespaces and picks the addresses of
// the address family asked for.
func newTopology(ipv6 bool) topology {
	id := fmt.Sprintf("%d%c", os.Getpid()%100000, 'a'+rune(clusterSeq.Add(1)%26))
	tp := topology{
		cp: netns("tk8s-cp-" + id), node: netns("tk8s-node-" + id),
		cpVeth: "tkc" + id, nodeVeth: "tkn" + id, ipv6: ipv6,
	}
	if ipv6 {
		tp.cpIP, tp.linkNodeIP = netip.MustParseAddr("2001:2::1"), netip.MustParseAddr("2001:2::2")
		tp.nodeIP = netip.MustParseAddr("2001:2:0:1::10")
		tp.podCIDR = netip.MustParsePrefix("2001:2:0:2::/64")
		tp.serviceCIDR = netip.MustParsePrefix("2001:2:0:3::/112")
		return tp
	}
	tp.cpIP, tp.linkNodeIP = netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	tp.nodeIP = netip.MustParseAddr("198.18.1.10")
	tp.podCIDR = netip.MustParsePrefix("198.18.2.0/24")
	tp.serviceCIDR = netip.MustParsePrefix("198.18.3.0/24")
	return tp
}

// linkBits is the prefix length of the link network.
func (tp topology) linkBits() int {
	if tp.ipv6 {
		return 126
	}
	return 30
}

// hostBits is the prefix length of a single address.
func (tp topology) hostBits() int {
	if tp.ipv6 {
		return 128
	}
	return 32
}

// podIP returns the i-th address of the pod range (i > 0).
func (tp topology) podIP(i int) netip.Addr { return nthAddr(tp.podCIDR, i) }

// serviceIP returns the i-th address of the service range (1 is the
// kubernetes Service's).
func (tp topology) serviceIP(i int) netip.Addr { return nthAddr(tp.serviceCIDR, i) }

// nthAddr returns the address i after p's first.
func nthAddr(p netip.Prefix, i int) netip.Addr {
	a := p.Masked().Addr()
	for range i {
		a = a.Next()
	}
	return a
}

// setup creates the namespaces and the link; cleanups remove them even if
// setup fails half way.
func (tp topology) setup(t *testing.T) {
	t.Helper()
	for _, ns := range []netns{tp.cp, tp.node} {
		run(t, "ip", "netns", "del", string(ns)) // a leftover of a crashed run with this PID
		mustRun(t, "ip", "netns", "add", string(ns))
		t.Cleanup(func() {
			if out, err := run(t, "ip", "netns", "del", string(ns)); err != nil {
				t.Errorf("ip netns del %s: %v: %s", ns, err, out)
			}
		})
	}
	mustRun(t, "ip", "link", "add", tp.cpVeth, "type", "veth", "peer", "name", tp.nodeVeth)
	t.Cleanup(func() { run(t, "ip", "link", "del", tp.cpVeth) }) // gone with the namespaces once moved
	mustRun(t, "ip", "link", "set", tp.cpVeth, "netns", string(tp.cp))
	mustRun(t, "ip", "link", "set", tp.nodeVeth, "netns", string(tp.node))
	for _, side := range []struct {
		ns   netns
		veth string
		ip   netip.Addr
	}{{tp.cp, tp.cpVeth, tp.cpIP}, {tp.node, tp.nodeVeth, tp.linkNodeIP}} {
		mustRun(t, side.ns.wrap("ip", "link", "set", "lo", "up")...)
		args := []string{"ip", "addr", "add", fmt.Sprintf("%s/%d", side.ip, tp.linkBits()), "dev", side.veth}
		if tp.ipv6 {
			args = append(args, "nodad")
		}
		mustRun(t, side.ns.wrap(args...)...)
		mustRun(t, side.ns.wrap("ip", "link", "set", side.veth, "up")...)
	}
	tp.addNodeAddr(t, tp.nodeIP)
}

// addNodeAddr puts ip on the node namespace's lo: a node, pod or service
// address that only the node namespace has.
func (tp topology) addNodeAddr(t *testing.T, ip netip.Addr) {
	t.Helper()
	mustRun(t, tp.node.wrap("ip", "addr", "add", fmt.Sprintf("%s/%d", ip, tp.hostBits()), "dev", "lo")...)
}

// resolveNode gives the control-plane namespace its own resolver files
// (`ip netns exec` bind-mounts /etc/netns/NAME/*): a hosts file that
// resolves the node's name to its IP, as cluster DNS would, and no
// nameserver but the namespace's own loopback, so no lookup ever leaves it.
// kube-apiserver's node proxy resolves a node's Hostname address before it
// dials (and refuses names that do not resolve), though the dial itself
// goes through the tunnel by name.
func (tp topology) resolveNode(t *testing.T, node string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", string(tp.cp))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	hosts := fmt.Sprintf("127.0.0.1 localhost\n::1 localhost\n%s %s\n", tp.nodeIP, node)
	writeFile(t, filepath.Join(dir, "hosts"), []byte(hosts), 0o644)
	writeFile(t, filepath.Join(dir, "resolv.conf"), []byte("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"), 0o644)
}
