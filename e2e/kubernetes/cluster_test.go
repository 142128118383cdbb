//go:build linux

package kubernetes

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// egressMode is how kube-apiserver reaches tunnel-server: one of the
// project's deploy/egress-selector files, named by its base name.
type egressMode string

const (
	modeUDS  egressMode = "http-connect-uds" // HTTP CONNECT over a unix socket
	modeTCP  egressMode = "http-connect-tcp" // HTTP CONNECT over TCP with mutual TLS
	modeGRPC egressMode = "grpc-uds"         // gRPC (Konnectivity's protocol) over a unix socket
)

// allModes is every egress mode, in the order subtests run them.
var allModes = []egressMode{modeUDS, modeTCP, modeGRPC}

// routeSource is where tunnel-server learns which agent serves which
// addresses (README "Routing").
type routeSource string

const (
	// routesKube: --kubeconfig, the Node objects' addresses and pod CIDRs;
	// the default route for the nodes named by --default-route-nodes.
	routesKube routeSource = "kubeconfig"
	// routesCerts: the agent's certificate proves its node IP; its pod CIDR
	// and default route are trusted with --trust-agent-routes.
	routesCerts routeSource = "certificates"
)

// Names and fixed ports inside the namespaces.
const (
	nodeName       = "node-1"
	apiserverPort  = 6443
	etcdClientPort = 2379
	etcdPeerPort   = 2380
	agentPort      = 8132
	frontendPort   = 8131 // the TCP frontend; deploy/egress-selector/http-connect-tcp.yaml names it
	serverAdmin    = "127.0.0.1:8133"
	agentAdmin     = "127.0.0.1:0" // several agents overlap in a rollout
)

// clusterOpts configures newCluster.
type clusterOpts struct {
	mode   egressMode
	routes routeSource
	ipv6   bool
	// kubeletByIP runs kube-apiserver with
	// --kubelet-preferred-address-types=InternalIP,Hostname, so it dials
	// kubelets by IP (routed by node IP); else it keeps its default,
	// Hostname first, and dials them by node name (routed by name), with
	// the control plane resolving the name as cluster DNS would.
	kubeletByIP   bool
	apiserverArgs []string // more kube-apiserver flags
	serverArgs    []string // more tunnel-server flags
	agentArgs     []string // more tunnel-agent flags
}

// cluster is a running control plane (etcd, kube-apiserver, tunnel-server)
// and node (tunnel-agent, kubelet API, pods) in their own namespaces.
type cluster struct {
	opts    clusterOpts
	tp      topology
	pki     *pki
	dir     string // short: unix sockets live here
	admin   string // kubectl's kubeconfig
	client  kubernetes.Interface
	kubelet *kubelet

	etcd, apiserver, server, agent *proc
	agentRestarts                  int
}

// newCluster starts everything and creates the node, the pod "web" with
// its targets, and the Service "web" in front of it.
func newCluster(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	requireEnv(t)
	if o.routes == "" {
		o.routes = routesKube
	}
	c := &cluster{opts: o, tp: newTopology(o.ipv6)}
	dir, err := os.MkdirTemp("", "tk8s-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c.dir = dir
	c.tp.setup(t)
	c.tp.resolveNode(t, nodeName)
	c.newPKI(t)
	c.startNode(t)
	c.startEtcd(t)
	c.startAPIServer(t)
	c.createObjects(t)
	c.startServer(t)
	c.startAgent(t)
	by := "node name"
	if o.kubeletByIP {
		by = "IP"
	}
	t.Logf("cluster: egress %s, routes from %s, kubelets dialed by %s, IPv6 %v", o.mode, o.routes, by, o.ipv6)
	isolated(t, c.tp.cp, hostPort(c.tp.nodeIP, kubeletPort))
	isolated(t, c.tp.cp, hostPort(c.tp.podIP(webPod), httpPort))
	return c
}

// hostPort joins an address and a port.
func hostPort(ip netip.Addr, port int) string {
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}

// newPKI writes every certificate the cluster uses.
func (c *cluster) newPKI(t *testing.T) {
	t.Helper()
	tp := c.tp
	// The sockets live beside the certificates (the deploy files name one
	// directory for both), so the set is in the short c.dir.
	c.pki = newPKI(t, filepath.Join(c.dir, "pki"), nodeName, tp.nodeIP, tp.cpIP)
	loop := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	c.pki.issue(t, "apiserver", leafSpec{cn: "kube-apiserver", server: true,
		dns: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		ips: append(loop, tp.cpIP, tp.serviceIP(1))})
	c.pki.issue(t, "admin", leafSpec{cn: "test-admin", orgs: []string{"system:masters"}})
	c.pki.issue(t, "apiserver-kubelet-client", leafSpec{cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}})
	c.pki.issue(t, "front-proxy-client", leafSpec{cn: "front-proxy-client"})
	c.pki.issue(t, "tunnel-server-kube", leafSpec{cn: "system:tunnel-server"})
	c.pki.issue(t, "kubelet", leafSpec{cn: nodeName, server: true, dns: []string{nodeName}, ips: []netip.Addr{tp.nodeIP}})
	c.pki.serviceAccountKey(t)
	c.admin = c.pki.kubeconfig(t, "admin", c.apiserverURL())
	c.pki.kubeconfig(t, "tunnel-server-kube", c.apiserverURL())
}

// apiserverURL is kube-apiserver's address inside the control-plane
// namespace.
func (c *cluster) apiserverURL() string {
	if c.tp.ipv6 {
		return fmt.Sprintf("https://[::1]:%d", apiserverPort)
	}
	return fmt.Sprintf("https://127.0.0.1:%d", apiserverPort)
}

// startEtcd runs etcd on the control plane's loopback and waits until it
// is healthy.
func (c *cluster) startEtcd(t *testing.T) {
	t.Helper()
	client := fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort)
	c.etcd = startProc(t, "etcd", c.tp.cp.wrap(bins.etcd,
		"--name", "default", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer,
		"--unsafe-no-fsync", "--log-level", "warn")...)
	hc := &http.Client{Transport: &http.Transport{DialContext: c.tp.cp.DialContext}, Timeout: 5 * time.Second}
	eventually(t, startTimeout, func() (bool, string) {
		if c.etcd.exited() {
			t.Fatalf("etcd exited: %v", c.etcd.err)
		}
		body, err := get(hc, client+"/health")
		return err == nil && strings.Contains(body, `"health":"true"`), fmt.Sprintf("etcd /health: %q %v", body, err)
	})
}

// egressConfig writes the project's deploy/egress-selector file for the
// cluster's mode with its paths pointing into the cluster's PKI directory,
// where the sockets and the frontend client certificate are.
func (c *cluster) egressConfig(t *testing.T) string {
	t.Helper()
	src := filepath.Join("..", "..", "deploy", "egress-selector", string(c.opts.mode)+".yaml")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "/etc/kubernetes/tunnel/", c.pki.dir+"/")
	if c.opts.mode == modeTCP && !strings.Contains(text, fmt.Sprintf("https://127.0.0.1:%d", frontendPort)) {
		t.Fatalf("%s no longer names https://127.0.0.1:%d", src, frontendPort)
	}
	path := filepath.Join(c.dir, "egress-selector.yaml")
	writeFile(t, path, []byte(text), 0o644)
	return path
}

// udsPath and grpcPath are the sockets the deploy files name.
func (c *cluster) udsPath() string  { return c.pki.path("tunnel.sock") }
func (c *cluster) grpcPath() string { return c.pki.path("grpc.sock") }

// startAPIServer runs kube-apiserver with the cluster's egress selector
// configuration and waits for /readyz.
func (c *cluster) startAPIServer(t *testing.T) {
	t.Helper()
	p, tp := c.pki, c.tp
	bind := "0.0.0.0"
	if tp.ipv6 {
		bind = "::"
	}
	args := []string{
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort),
		"--bind-address", bind, "--secure-port", strconv.Itoa(apiserverPort),
		"--advertise-address", tp.cpIP.String(),
		"--tls-cert-file", p.path("apiserver.crt"), "--tls-private-key-file", p.path("apiserver.key"),
		"--client-ca-file", p.ca(),
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", p.path("sa.pub"), "--service-account-signing-key-file", p.path("sa.key"),
		"--service-cluster-ip-range", tp.serviceCIDR.String(),
		"--authorization-mode", "Node,RBAC",
		// No kube-controller-manager creates service accounts here.
		"--disable-admission-plugins", "ServiceAccount",
		"--endpoint-reconciler-type", "none",
		"--kubelet-client-certificate", p.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key", p.path("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority", p.ca(),
		"--proxy-client-cert-file", p.path("front-proxy-client.crt"),
		"--proxy-client-key-file", p.path("front-proxy-client.key"),
		"--requestheader-client-ca-file", p.ca(),
		"--requestheader-allowed-names", "front-proxy-client",
		"--requestheader-username-headers", "X-Remote-User",
		"--requestheader-group-headers", "X-Remote-Group",
		"--requestheader-extra-headers-prefix", "X-Remote-Extra-",
		"--egress-selector-config-file", c.egressConfig(t),
		"--profiling=false",
	}
	if c.opts.kubeletByIP {
		args = append(args, "--kubelet-preferred-address-types", "InternalIP,Hostname")
	}
	args = append(args, c.opts.apiserverArgs...)
	c.apiserver = startProc(t, "kube-apiserver", tp.cp.wrap(append([]string{bins.kubeAPIServer}, args...)...)...)
	cfg := c.restConfig()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hc.Timeout = 10 * time.Second
	start := time.Now()
	eventually(t, startTimeout, func() (bool, string) {
		if c.apiserver.exited() {
			t.Fatalf("kube-apiserver exited: %v", c.apiserver.err)
		}
		body, err := get(hc, c.apiserverURL()+"/readyz")
		return err == nil && body == "ok", fmt.Sprintf("kube-apiserver /readyz: %q %v", body, err)
	})
	t.Logf("kube-apiserver ready in %s", time.Since(start).Round(time.Millisecond))
	if c.client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
}

// restConfig is the admin's client configuration, dialing from inside the
// control-plane namespace.
func (c *cluster) restConfig() *rest.Config {
	return &rest.Config{
		Host: c.apiserverURL(),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile: c.pki.ca(), CertFile: c.pki.path("admin.crt"), KeyFile: c.pki.path("admin.key"),
		},
		Dial: c.tp.cp.DialContext, QPS: 200, Burst: 400, Timeout: 30 * time.Second,
	}
}

// get returns the body of a GET that answered 200.
func get(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(body), err
}

// serverListener is the frontend listener name each mode waits for.
var serverListener = map[egressMode]string{modeUDS: "uds", modeTCP: "frontend", modeGRPC: "grpc-uds"}

// startServer runs tunnel-server in the control plane with the frontend of
// the cluster's mode and its route source.
func (c *cluster) startServer(t *testing.T) {
	t.Helper()
	p := c.pki
	args := []string{bins.tunnelServer,
		"--agent-listen-address", hostPort(c.tp.cpIP, agentPort),
		"--tls-cert-file", p.path("server.crt"), "--tls-private-key-file", p.path("server.key"),
		"--agent-ca-file", p.ca(),
		"--admin-listen-address", serverAdmin,
	}
	switch c.opts.mode {
	case modeUDS:
		args = append(args, "--uds-path", c.udsPath())
	case modeTCP:
		args = append(args, "--frontend-listen-address", fmt.Sprintf("127.0.0.1:%d", frontendPort), "--frontend-ca-file", p.ca())
	case modeGRPC:
		args = append(args, "--grpc-uds-path", c.grpcPath())
	}
	switch c.opts.routes {
	case routesKube:
		args = append(args, "--kubeconfig", p.path("tunnel-server-kube.kubeconfig"), "--default-route-nodes", nodeName)
	case routesCerts:
		args = append(args, "--trust-agent-routes")
	}
	args = append(args, c.opts.serverArgs...)
	c.server = startProc(t, "tunnel-server", c.tp.cp.wrap(args...)...)
	re := regexp.MustCompile(`msg=listening listener=` + serverListener[c.opts.mode] + ` `)
	c.server.waitLog(t, re, startTimeout)
}

// registeredRE matches the agent's line once its session is accepted.
var registeredRE = regexp.MustCompile(`msg=registered .*node=(\S+)`)

// agentArgv is the agent's command line.
func (c *cluster) agentArgv() []string {
	p := c.pki
	args := []string{bins.tunnelAgent,
		"--server-address", hostPort(c.tp.cpIP, agentPort),
		"--ca-file", p.ca(),
		"--tls-cert-file", p.path("agent-" + nodeName + ".crt"),
		"--tls-private-key-file", p.path("agent-" + nodeName + ".key"),
		"--node-name", nodeName,
		"--node-ip", c.tp.nodeIP.String(),
		"--pod-cidr", c.tp.podCIDR.String(),
		"--allow-cidr", c.tp.serviceCIDR.String(),
		"--admin-listen-address", agentAdmin,
	}
	if c.opts.routes == routesCerts {
		args = append(args, "--default-route")
	}
	return c.tp.node.wrap(append(args, c.opts.agentArgs...)...)
}

// startAgent runs a new tunnel-agent in the node namespace and waits until
// it has registered.
func (c *cluster) startAgent(t *testing.T) *proc {
	t.Helper()
	c.agentRestarts++
	c.agent = startProc(t, fmt.Sprintf("tunnel-agent #%d", c.agentRestarts), c.agentArgv()...)
	if m := c.agent.waitLog(t, registeredRE, startTimeout); m[1] != nodeName {
		t.Fatalf("agent registered as node %q, want %q", m[1], nodeName)
	}
	return c.agent
}

var (
	// agentsConnectedRE matches tunnel-server's gauge of registered agents.
	agentsConnectedRE = regexp.MustCompile(`(?m)^tunnel_server_agents_connected\{[^}]*\} (\d+)$`)
	// streamsOpenRE matches tunnel-server's gauge of open tunnels.
	streamsOpenRE = regexp.MustCompile(`(?m)^tunnel_server_streams_open (\d+)$`)
)

// waitAgentGone waits until tunnel-server has dropped the killed agent and
// closed every tunnel it carried. Only then has kube-apiserver been told
// its pooled connections through the agent are gone; a request sent
// earlier may still pick one and fail with EOF, as over any connection
// that breaks while a request is sent, instead of with tunnel-server's
// "no agent" reason.
func (c *cluster) waitAgentGone(t *testing.T) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: c.tp.cp.DialContext}, Timeout: 5 * time.Second}
	eventually(t, startTimeout, func() (bool, string) {
		body, err := get(hc, "http://"+serverAdmin+"/metrics")
		if err != nil {
			return false, err.Error()
		}
		sum := func(re *regexp.Regexp) (n int) {
			for _, m := range re.FindAllStringSubmatch(body, -1) {
				v, _ := strconv.Atoi(m[1])
				n += v
			}
			return n
		}
		agents, streams := sum(agentsConnectedRE), sum(streamsOpenRE)
		return agents == 0 && streams == 0, fmt.Sprintf("tunnel-server counts %d agents and %d open tunnels", agents, streams)
	})
}

// ctx returns a context for one API call.
func callCtx(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), kubectlTimeout)
}
