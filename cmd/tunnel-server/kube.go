package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
	"github.com/tunnel-project/tunnel/tunnel/kube"
)

// kubeFlags bind the Kubernetes API as the source of agents' routes
// (tunnel/nodes.go, tunnel/kube).
type kubeFlags struct {
	kubeconfig        string
	defaultRouteLabel string
	defaultRouteNodes []string
}

// inCluster is the --kubeconfig value that selects the pod's service account.
const inCluster = "in-cluster"

// kubeSyncTimeout bounds the first listing of the Nodes at startup.
const kubeSyncTimeout = 2 * time.Minute

func (k *kubeFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", `kubeconfig file, or "in-cluster" for the pod's service account: agents' routes then come from their Node objects (addresses, podCIDRs), and what agents declare is only checked (empty: routes from certificates)`)
	fs.StringVar(&k.defaultRouteLabel, "default-route-node-label", "", "with --kubeconfig, agents of nodes with this label serve the default route (key=value, or key for any value)")
	fs.StringSliceVar(&k.defaultRouteNodes, "default-route-nodes", nil, "with --kubeconfig, agents of these nodes serve the default route (repeatable)")
}

// start watches the Nodes and sets cfg.Nodes once they are listed; stop
// ends the watch. Without --kubeconfig it does nothing.
func (k *kubeFlags) start(cfg *tunnel.ServerConfig, log *slog.Logger) (stop func(), err error) {
	stop = func() {}
	if k.kubeconfig == "" {
		if k.defaultRouteLabel != "" || len(k.defaultRouteNodes) > 0 {
			return stop, &cli.FlagError{Flag: "kubeconfig", Msg: "--default-route-node-label and --default-route-nodes need it"}
		}
		return stop, nil
	}
	if cfg.TrustAgentRoutes {
		return stop, &cli.FlagError{Flag: "trust-agent-routes", Msg: "cannot be used with --kubeconfig: routes come from the Node objects"}
	}
	kcfg := kube.Config{DefaultRouteNodes: k.defaultRouteNodes, Logger: log.With("source", "kubernetes")}
	if k.defaultRouteLabel != "" {
		if kcfg.DefaultRouteSelector, err = labels.Parse(k.defaultRouteLabel); err != nil {
			return stop, &cli.FlagError{Flag: "default-route-node-label", Msg: err.Error()}
		}
	}
	if kcfg.Client, err = k.client(); err != nil {
		return stop, err
	}
	nodes, err := kube.NewNodes(kcfg)
	if err != nil {
		return stop, err
	}
	nodes.Start()
	ctx, cancel := context.WithTimeout(context.Background(), kubeSyncTimeout)
	defer cancel()
	log.Info("listing nodes", "kubeconfig", k.kubeconfig)
	if err := nodes.WaitForSync(ctx); err != nil {
		nodes.Stop()
		return stop, &cli.FlagError{Flag: "kubeconfig", Msg: err.Error()}
	}
	cfg.Nodes = nodes
	return nodes.Stop, nil
}

func (k *kubeFlags) client() (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if k.kubeconfig == inCluster {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", k.kubeconfig)
	}
	if err == nil {
		rc.UserAgent = prog
		var c kubernetes.Interface
		if c, err = kubernetes.NewForConfig(rc); err == nil {
			return c, nil
		}
	}
	return nil, &cli.FlagError{Flag: "kubeconfig", Msg: err.Error()}
}
