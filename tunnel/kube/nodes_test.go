package kube

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tunnel-project/tunnel/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newNode returns a Node with the given addresses ("InternalIP=10.0.0.1")
// and pod CIDRs.
func newNode(name string, lbls map[string]string, addrs []string, podCIDRs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}, Spec: corev1.NodeSpec{PodCIDRs: podCIDRs}}
	for _, a := range addrs {
		typ, addr, _ := strings.Cut(a, "=")
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeAddressType(typ), Address: addr})
	}
	return n
}

// source is a Nodes over a fake clientset, listed and watching, with every
// notification sent on changes.
type source struct {
	*Nodes
	client  *fake.Clientset
	changes chan string
}

// startSource starts Nodes over a fake clientset holding objs and waits
// until its informer lists and watches.
func startSource(t *testing.T, cfg Config, objs ...runtime.Object) *source {
	t.Helper()
	client := fake.NewClientset(objs...)
	watching := make(chan struct{})
	client.PrependWatchReactor("nodes", func(k8stesting.Action) (bool, watch.Interface, error) {
		select {
		case <-watching:
		default:
			close(watching)
		}
		return false, nil, nil // the default reactor serves the watch
	})
	cfg.Client = client
	n, err := NewNodes(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &source{Nodes: n, client: client, changes: make(chan string, 100)}
	n.Notify(func(node string) { s.changes <- node })
	n.Start()
	t.Cleanup(n.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-watching: // changes from now on reach the informer
	case <-ctx.Done():
		t.Fatal("informer never watched")
	}
	for range objs { // the initial list's notifications
		<-s.changes
	}
	return s
}

// next waits for the next notification and returns its node.
func (s *source) next(t *testing.T) string {
	t.Helper()
	select {
	case n := <-s.changes:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no node notification")
		return ""
	}
}

func (s *source) update(t *testing.T, n *corev1.Node) {
	t.Helper()
	if _, err := s.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func TestLookupBindsAddressesAndPodCIDRs(t *testing.T) {
	sel, err := labels.Parse("tunnel.example/default-route=true")
	if err != nil {
		t.Fatal(err)
	}
	s := startSource(t, Config{DefaultRouteSelector: sel, DefaultRouteNodes: []string{"node-c"}},
		newNode("node-a", nil, []string{"InternalIP=10.0.0.1", "ExternalIP=203.0.113.1", "Hostname=A.example", "InternalDNS=a.internal"}, "10.244.1.0/24", "fd00:1::/64"),
		newNode("node-b", map[string]string{"tunnel.example/default-route": "true"}, []string{"InternalIP=10.0.0.2"}),
		newNode("node-c", nil, nil))

	cases := []struct {
		node string
		want tunnel.NodeInfo
	}{
		{"node-a", tunnel.NodeInfo{IPs: addrs("10.0.0.1", "203.0.113.1"), Hostnames: []string{"a.example"}, PodCIDRs: prefixes("10.244.1.0/24", "fd00:1::/64")}},
		{"node-b", tunnel.NodeInfo{IPs: addrs("10.0.0.2"), DefaultRoute: true}},
		{"node-c", tunnel.NodeInfo{DefaultRoute: true}},
	}
	for _, tc := range cases {
		got, ok := s.Lookup(tc.node)
		if !ok || !sameInfo(got, tc.want) {
			t.Errorf("Lookup(%s) = %+v, %v; want %+v", tc.node, got, ok, tc.want)
		}
	}
	if _, ok := s.Lookup("node-x"); ok {
		t.Error("Lookup of a node that does not exist succeeded")
	}
}

func TestNotifyOnChangeAndDeletion(t *testing.T) {
	a := newNode("node-a", nil, []string{"InternalIP=10.0.0.1"}, "10.244.1.0/24")
	b := newNode("node-b", nil, []string{"InternalIP=10.0.0.2"})
	s := startSource(t, Config{}, a, b)

	// A heartbeat (a condition changes) gives the agent nothing new: no
	// notification. The next one is node-b's.
	a = a.DeepCopy()
	a.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	s.update(t, a)
	b = b.DeepCopy()
	b.Labels = map[string]string{"x": "y"} // nothing an agent gets either
	s.update(t, b)
	b = b.DeepCopy()
	b.Spec.PodCIDRs = []string{"10.244.2.0/24"}
	s.update(t, b)
	if got := s.next(t); got != "node-b" {
		t.Fatalf("first notification for %s, want node-b (node-a's heartbeat changed nothing)", got)
	}
	if info, _ := s.Lookup("node-b"); !slices.Equal(info.PodCIDRs, prefixes("10.244.2.0/24")) {
		t.Errorf("node-b's pod CIDRs after the update: %v", info.PodCIDRs)
	}

	a = a.DeepCopy()
	a.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.9"}}
	s.update(t, a)
	if got := s.next(t); got != "node-a" {
		t.Fatalf("notification for %s, want node-a", got)
	}
	if info, _ := s.Lookup("node-a"); !slices.Equal(info.IPs, addrs("10.0.0.9")) {
		t.Errorf("node-a's IPs after the update: %v", info.IPs)
	}

	if err := s.client.CoreV1().Nodes().Delete(context.Background(), "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := s.next(t); got != "node-a" {
		t.Fatalf("notification for %s, want node-a", got)
	}
	if _, ok := s.Lookup("node-a"); ok {
		t.Error("a deleted node is still found")
	}
}

func TestLegacyPodCIDRAndBadValues(t *testing.T) {
	n := newNode("node-a", nil, []string{"InternalIP=not-an-ip", "InternalIP=::ffff:10.0.0.1"})
	n.Spec.PodCIDR = "10.244.1.7/24"
	s := startSource(t, Config{}, n)
	info, ok := s.Lookup("node-a")
	want := tunnel.NodeInfo{IPs: addrs("10.0.0.1"), PodCIDRs: prefixes("10.244.1.0/24")}
	if !ok || !sameInfo(info, want) {
		t.Errorf("Lookup = %+v, want %+v", info, want)
	}
}
