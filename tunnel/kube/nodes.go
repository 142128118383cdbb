// Package kube makes the Kubernetes API the server's record of the nodes
// (tunnel.NodeSource): a Node informer's cache gives each agent its node's
// addresses and pod CIDRs, and names the nodes whose agents serve the
// default route. It is a package of its own so that package tunnel and
// tunnel-agent do not link client-go.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tunnel-project/tunnel/tunnel"
)

// Config configures Nodes.
type Config struct {
	// Client reads and watches the Nodes (get, list and watch on nodes;
	// deploy/kubernetes/base/tunnel-server-rbac.yaml).
	Client kubernetes.Interface
	// DefaultRouteSelector names the nodes whose agents serve the default
	// route by their labels (labels.Parse: "key=value", or "key" for any
	// value). Nil or empty selects none.
	DefaultRouteSelector labels.Selector
	// DefaultRouteNodes names further nodes whose agents serve the default
	// route.
	DefaultRouteNodes []string
	// Resync is the informer's resync period. Zero: none; the watch alone
	// keeps the cache current.
	Resync time.Duration
	// Logger receives node changes. Nil discards them.
	Logger *slog.Logger
}

// Nodes is a tunnel.NodeSource backed by a Node informer. Start it, wait for
// WaitForSync, then hand it to tunnel.ServerConfig.Nodes; Stop ends it.
type Nodes struct {
	cfg      Config
	log      *slog.Logger
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	lister   interface {
		Get(name string) (*corev1.Node, error)
	}

	stop     chan struct{} // closed by Stop
	stopOnce sync.Once

	mu     sync.Mutex
	notify []func(node string)
}

// NewNodes returns a Nodes that has not started watching yet.
func NewNodes(cfg Config) (*Nodes, error) {
	if cfg.Client == nil {
		return nil, &tunnel.ConfigError{Field: "kube.Client", Msg: "a Kubernetes client is required"}
	}
	if cfg.DefaultRouteSelector == nil {
		cfg.DefaultRouteSelector = labels.Nothing()
	}
	n := &Nodes{cfg: cfg, log: cfg.Logger, stop: make(chan struct{}),
		factory: informers.NewSharedInformerFactory(cfg.Client, cfg.Resync)}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	nodes := n.factory.Core().V1().Nodes()
	n.informer, n.lister = nodes.Informer(), nodes.Lister()
	_, err := n.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { n.changed(obj, "added") },
		UpdateFunc: n.updated,
		DeleteFunc: func(obj any) { n.changed(obj, "deleted") },
	})
	if err != nil {
		return nil, fmt.Errorf("kube: node informer: %w", err)
	}
	return n, nil
}

// Start begins listing and watching the Nodes.
func (n *Nodes) Start() { n.factory.Start(n.stop) }

// WaitForSync blocks until the informer has listed every Node, or ctx ends.
func (n *Nodes) WaitForSync(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), n.informer.HasSynced) {
		return fmt.Errorf("kube: nodes not listed: %w", context.Cause(ctx))
	}
	return nil
}

// Stop ends the watch and waits for the informer's goroutines.
func (n *Nodes) Stop() {
	n.stopOnce.Do(func() { close(n.stop) })
	n.factory.Shutdown()
}

// Lookup implements tunnel.NodeSource: the addresses, hostnames and pod
// CIDRs of the Node called name, and whether it serves the default route.
func (n *Nodes) Lookup(name string) (tunnel.NodeInfo, bool) {
	node, err := n.lister.Get(name)
	if err != nil {
		return tunnel.NodeInfo{}, false
	}
	return n.info(node), true
}

// Count implements tunnel.NodeSource: the number of Nodes in the cache.
func (n *Nodes) Count() int { return len(n.informer.GetStore().ListKeys()) }

// Notify implements tunnel.NodeSource.
func (n *Nodes) Notify(f func(node string)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.notify = append(n.notify, f)
}

// info is what a Node gives its agent: InternalIP and ExternalIP addresses,
// Hostname addresses, spec.podCIDRs (or the older spec.podCIDR).
func (n *Nodes) info(node *corev1.Node) tunnel.NodeInfo {
	info := tunnel.NodeInfo{DefaultRoute: n.defaultRoute(node)}
	for _, a := range node.Status.Addresses {
		switch a.Type {
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				info.IPs = append(info.IPs, ip.Unmap())
			}
		case corev1.NodeHostName:
			info.Hostnames = append(info.Hostnames, strings.ToLower(a.Address))
		}
	}
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			info.PodCIDRs = append(info.PodCIDRs, p.Masked())
		}
	}
	return info
}

func (n *Nodes) defaultRoute(node *corev1.Node) bool {
	return slices.Contains(n.cfg.DefaultRouteNodes, node.Name) || n.cfg.DefaultRouteSelector.Matches(labels.Set(node.Labels))
}

// updated passes on an update only if it changes what an agent gets: most
// Node updates are the kubelet's status heartbeats.
func (n *Nodes) updated(oldObj, newObj any) {
	oldNode, ok1 := oldObj.(*corev1.Node)
	newNode, ok2 := newObj.(*corev1.Node)
	if ok1 && ok2 && sameInfo(n.info(oldNode), n.info(newNode)) {
		return
	}
	n.changed(newObj, "changed")
}

func sameInfo(a, b tunnel.NodeInfo) bool {
	return a.DefaultRoute == b.DefaultRoute && slices.Equal(a.IPs, b.IPs) &&
		slices.Equal(a.Hostnames, b.Hostnames) && slices.Equal(a.PodCIDRs, b.PodCIDRs)
}

// changed tells every subscriber that a node was added, changed or deleted.
func (n *Nodes) changed(obj any, what string) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	node, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	n.log.Info("node "+what, "node", node.Name)
	n.mu.Lock()
	subs := slices.Clone(n.notify)
	n.mu.Unlock()
	for _, f := range subs {
		f(node.Name)
	}
}
