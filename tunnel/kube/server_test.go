package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/tunnel"
)

// A real server and real agents over loopback TLS 1.3 and yamux, with
// routes from Node objects in a fake clientset watched by a real informer.

type kubeHarness struct {
	*source
	t      *testing.T
	files  certs.Files
	srv    *tunnel.Server
	reg    *prometheus.Registry
	addr   string
	synced chan string // node names, once the server has rebound them
}

func newKubeHarness(t *testing.T, cfg Config, objs ...runtime.Object) *kubeHarness {
	t.Helper()
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(t.TempDir(), "pki"),
		Nodes: []certs.Node{{Name: "node-a"}, {Name: "node-b"}, {Name: "node-c"}}})
	if err != nil {
		t.Fatal(err)
	}
	h := &kubeHarness{t: t, files: files, reg: prometheus.NewRegistry(), synced: make(chan string, 100)}
	h.source = startSource(t, cfg, objs...)
	scfg := tunnel.DefaultServerConfig()
	scfg.AgentTLS = &tls.Config{Certificates: []tls.Certificate{h.keyPair(files.ServerCert, files.ServerKey)}, ClientCAs: h.pool()}
	scfg.Nodes = h.Nodes
	scfg.Registerer = h.reg
	if h.srv, err = tunnel.NewServer(scfg); err != nil {
		t.Fatal(err)
	}
	// Subscribers run in order: once this one hears of a node, the server
	// has rebound that node's agents.
	h.Notify(func(node string) { h.synced <- node })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); h.srv.ServeAgents(ln) }()
	t.Cleanup(func() { h.srv.Close(); <-done })
	return h
}

func (h *kubeHarness) keyPair(cert, key string) tls.Certificate {
	c, err := certs.LoadKeyPair(cert, key)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

func (h *kubeHarness) pool() *x509.CertPool {
	p, err := certs.LoadPool(h.files.CACert)
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

// runAgent runs an agent for node that declares ips and may dial any
// loopback address; it stops in cleanup.
func (h *kubeHarness) runAgent(node string, ips ...string) {
	f := h.files.Agents[node]
	cfg := tunnel.DefaultAgentConfig()
	cfg.ServerAddress = h.addr
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{h.keyPair(f[0], f[1])}, RootCAs: h.pool(), ServerName: "localhost"}
	cfg.NodeName = node
	cfg.NodeIPs = addrs(ips...)
	cfg.AllowCIDRs = prefixes("127.0.0.0/8")
	cfg.ResolveNames = true // a Node's Hostname address ("localhost" here) is a name the agent looks up
	cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 100*time.Millisecond
	cfg.DrainTimeout = time.Millisecond
	a, err := tunnel.NewAgent(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	h.t.Cleanup(func() { cancel(); <-done })
}

func (h *kubeHarness) waitAgents(n int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.srv.WaitAgents(ctx, n); err != nil {
		h.t.Fatal(err)
	}
}

// waitSynced waits until the server has applied a change of node.
func (h *kubeHarness) waitSynced(node string) {
	h.t.Helper()
	for {
		select {
		case n := <-h.synced:
			if n == node {
				return
			}
		case <-time.After(10 * time.Second):
			h.t.Fatalf("server never applied a change of %s", node)
		}
	}
}

// dial dials addr through the server and returns the result; an open
// connection is closed at once.
func (h *kubeHarness) dial(addr string) tunnel.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h.srv.Dial(ctx, addr)
	if err == nil {
		c.Close()
		return tunnel.ResultOK
	}
	var de *tunnel.DialError
	if !errors.As(err, &de) {
		h.t.Fatalf("dial %s: %v", addr, err)
	}
	return de.Result
}

func (h *kubeHarness) expectDial(addr string, want tunnel.Result) {
	h.t.Helper()
	if got := h.dial(addr); got != want {
		h.t.Errorf("dial %s: result %v, want %v", addr, got, want)
	}
}

// waitRejected waits until the server has rejected an agent for reason.
func (h *kubeHarness) waitRejected(reason string) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		mfs, err := h.reg.Gather()
		if err != nil {
			h.t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "tunnel_server_agent_rejections_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "reason" && l.GetValue() == reason && m.GetCounter().GetValue() > 0 {
						return
					}
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.t.Fatalf("no agent rejected for %q", reason)
}

// listenOn serves accept-and-close on ip and returns the address.
func listenOn(t *testing.T, ip string) string {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func TestAgentBoundToItsNode(t *testing.T) {
	h := newKubeHarness(t, Config{},
		newNode("node-a", nil, []string{"InternalIP=127.0.0.1", "Hostname=localhost"}, "10.244.1.0/24"))
	target1, target3 := listenOn(t, "127.0.0.1"), listenOn(t, "127.0.0.3")
	h.runAgent("node-a", "127.0.0.1") // declares no pod CIDR: the Node's is routed anyway
	h.waitAgents(1)

	h.expectDial(target1, tunnel.ResultOK)
	h.expectDial("localhost:"+port(target1), tunnel.ResultOK)      // the Hostname address
	h.expectDial("10.244.1.5:80", tunnel.ResultForbidden)          // the pod CIDR reaches the agent, whose policy refuses
	h.expectDial("10.9.9.9:80", tunnel.ResultNoAgent)              // no default route
	h.expectDial("127.0.0.3:"+port(target3), tunnel.ResultNoAgent) // not the node's (yet)

	// The Node moves: the routes follow without the agent reconnecting.
	n, err := h.client.CoreV1().Nodes().Get(context.Background(), "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.3"}}
	n.Spec.PodCIDRs = []string{"10.244.2.0/24"}
	h.update(t, n)
	h.waitSynced("node-a")
	h.expectDial(target3, tunnel.ResultOK)
	h.expectDial(target1, tunnel.ResultNoAgent)
	h.expectDial("localhost:"+port(target1), tunnel.ResultNoAgent)
	h.expectDial("10.244.1.5:80", tunnel.ResultNoAgent)
	h.expectDial("10.244.2.5:80", tunnel.ResultForbidden)
	h.expectDial("node-a:"+port(target1), tunnel.ResultOK) // the name routes on; the agent dials its own first --node-ip
	if h.srv.Agents() != 1 {
		t.Errorf("%d agents after the update, want the same 1", h.srv.Agents())
	}

	// The Node goes: its agent is dropped and, reconnecting, rejected.
	if err := h.client.CoreV1().Nodes().Delete(context.Background(), "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitSynced("node-a")
	h.expectDial(target3, tunnel.ResultNoAgent)
	h.expectDial("node-a:80", tunnel.ResultNoAgent)
	h.waitRejected(tunnel.RejectNode)
	if h.srv.Agents() != 0 {
		t.Errorf("%d agents after the node was deleted", h.srv.Agents())
	}
}

func TestDeclarationsOnlyChecked(t *testing.T) {
	h := newKubeHarness(t, Config{}, newNode("node-b", nil, []string{"InternalIP=10.0.0.2"}))
	h.runAgent("node-b", "127.0.0.2") // an IP its Node does not have
	h.waitRejected(tunnel.RejectRoutes)
	h.runAgent("node-c") // no Node at all
	h.waitRejected(tunnel.RejectNode)
	if h.srv.Agents() != 0 {
		t.Errorf("%d agents registered, want none", h.srv.Agents())
	}
	h.expectDial("10.0.0.2:80", tunnel.ResultNoAgent)
}

func TestDefaultRouteByLabel(t *testing.T) {
	sel, err := labels.Parse("tunnel.example/default-route=true")
	if err != nil {
		t.Fatal(err)
	}
	lbl := map[string]string{"tunnel.example/default-route": "true"}
	h := newKubeHarness(t, Config{DefaultRouteSelector: sel},
		newNode("node-c", lbl, []string{"InternalIP=10.0.0.3"}),
		newNode("node-b", nil, []string{"InternalIP=10.0.0.2"}))
	target := listenOn(t, "127.0.0.9")
	h.runAgent("node-c", "10.0.0.3")
	h.runAgent("node-b", "10.0.0.2")
	h.waitAgents(2)
	h.expectDial(target, tunnel.ResultOK) // only node-c's agent serves it

	n, err := h.client.CoreV1().Nodes().Get(context.Background(), "node-c", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Labels = nil
	h.update(t, n)
	h.waitSynced("node-c")
	h.expectDial(target, tunnel.ResultNoAgent)
}
