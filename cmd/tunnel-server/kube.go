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
// (tunnel/nodes.go, tunnel/kube) and, with --replica-leases, of the replica
// count (tunnel/ha.go, tunnel/kube/leases.go).
type kubeFlags struct {
	kubeconfig        string
	defaultRouteLabel string
	defaultRouteNodes []string
	replicaLeases     bool
	leaseNamespace    string
	leaseDuration     time.Duration
	fs                *pflag.FlagSet // every flag of the server, to tell those set from defaults
}

// inCluster is the --kubeconfig value that selects the pod's service account.
const inCluster = "in-cluster"

// kubeSyncTimeout bounds the first listing of the Nodes, and the first
// write of this replica's Lease and listing of the others', at startup.
const kubeSyncTimeout = 2 * time.Minute

// leaseFlags names the flag bound to each kube.LeaseConfig field.
var leaseFlags = map[string]string{
	"kube.LeaseConfig.ID":        "server-id",
	"kube.LeaseConfig.Namespace": "lease-namespace",
	"kube.LeaseConfig.Duration":  "lease-duration",
}

// bind adds the node-source flags to routing and the Lease flags to ha.
func (k *kubeFlags) bind(routing, ha *pflag.FlagSet) {
	routing.StringVar(&k.kubeconfig, "kubeconfig", "", `kubeconfig file, or "in-cluster" for the pod's service account: agents' routes then come from their Node objects (addresses, podCIDRs), and what agents declare is only checked (empty: routes from certificates)`)
	routing.StringVar(&k.defaultRouteLabel, "default-route-node-label", "", "with --kubeconfig, agents of nodes with this label serve the default route (key=value, or key for any value)")
	routing.StringSliceVar(&k.defaultRouteNodes, "default-route-nodes", nil, "with --kubeconfig, agents of these nodes serve the default route (repeatable)")
	ha.BoolVar(&k.replicaLeases, "replica-leases", false, "with --kubeconfig, count the replicas sharing the agents' server address by their Leases: each holds one, tunnel-server-<server ID>, and deletes it when it stops (excludes --server-count; needs a stable, distinct --server-id)")
	ha.StringVar(&k.leaseNamespace, "lease-namespace", kube.DefaultLeaseNamespace, "with --replica-leases, the namespace of the replicas' Leases")
	ha.DurationVar(&k.leaseDuration, "lease-duration", kube.DefaultLeaseDuration, "with --replica-leases, the Leases' duration: a replica gone without deleting its Lease is counted this long (renewed every third of it; whole seconds)")
}

// changed reports whether the flag name was set on the command line.
func (k *kubeFlags) changed(name string) bool { return k.fs != nil && k.fs.Changed(name) }

// start watches the Nodes and sets cfg.Nodes once they are listed and,
// with --replica-leases, holds this replica's Lease and sets cfg.Replicas
// once the Leases are listed; stop ends the watches and deletes the Lease.
// Without --kubeconfig it does nothing. fs holds every flag of the server.
func (k *kubeFlags) start(fs *pflag.FlagSet, cfg *tunnel.ServerConfig, log *slog.Logger) (stop func(), err error) {
	stop = func() {}
	k.fs = fs
	if err := k.checkLeaseFlags(); err != nil {
		return stop, err
	}
	if k.kubeconfig == "" {
		if k.defaultRouteLabel != "" || len(k.defaultRouteNodes) > 0 || k.replicaLeases {
			return stop, &cli.FlagError{Flag: "kubeconfig", Msg: "--default-route-node-label, --default-route-nodes and --replica-leases need it"}
		}
		return stop, nil
	}
	if cfg.TrustAgentRoutes {
		return stop, &cli.FlagError{Flag: "trust-agent-routes", Msg: "cannot be used with --kubeconfig: routes come from the Node objects"}
	}
	kcfg := kube.Config{DefaultRouteNodes: k.defaultRouteNodes, Logger: log.With("source", "kubernetes")}
	if k.defaultRouteLabel != "" {
		if kcfg.DefaultRouteSelector, err = labels.Parse(k.defaultRouteLabel); err != nil {
			return stop, cli.Blame("default-route-node-label", err)
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
		return stop, cli.Blame("kubeconfig", err)
	}
	if !k.replicaLeases {
		cfg.Nodes = nodes
		return nodes.Stop, nil
	}
	leases, err := k.startLeases(kcfg.Client, cfg, log)
	if err != nil {
		nodes.Stop()
		return stop, err
	}
	cfg.Nodes, cfg.Replicas = nodes, leases
	return func() { leases.Stop(); nodes.Stop() }, nil
}

// checkLeaseFlags requires --replica-leases for the flags that tune it, and
// refuses it with --server-count (ha.go): the count comes from one or the
// other.
func (k *kubeFlags) checkLeaseFlags() error {
	if k.replicaLeases && k.changed("server-count") {
		return &cli.FlagError{Flag: "replica-leases", Msg: "cannot be used with --server-count: the replica count comes from the Leases"}
	}
	for _, name := range []string{"lease-namespace", "lease-duration"} {
		if !k.replicaLeases && k.changed(name) {
			return &cli.FlagError{Flag: name, Msg: "needs --replica-leases"}
		}
	}
	return nil
}

// startLeases writes this replica's Lease, under cfg.ID, and waits until the other replicas' Leases are listed.
func (k *kubeFlags) startLeases(client kubernetes.Interface, cfg *tunnel.ServerConfig, log *slog.Logger) (*kube.Leases, error) {
	if cfg.ID == "" { // a random one would leave a restarted replica's old Lease to expire, counted meanwhile
		return nil, &cli.FlagError{Flag: "server-id", Msg: "--replica-leases needs a stable --server-id for this replica (its host name, say)"}
	}
	leases, err := kube.NewLeases(kube.LeaseConfig{Client: client, Namespace: k.leaseNamespace, ID: cfg.ID,
		Duration: k.leaseDuration, Address: cfg.AdvertiseAddress, Logger: log.With("source", "kubernetes")})
	if err != nil {
		return nil, cli.FromConfig(err, leaseFlags)
	}
	ctx, cancel := context.WithTimeout(context.Background(), kubeSyncTimeout)
	defer cancel()
	log.Info("holding replica lease", "lease", k.leaseNamespace+"/"+leases.Name())
	err = leases.Start(ctx)
	if err == nil {
		err = leases.WaitForSync(ctx)
	}
	if err != nil {
		leases.Stop()
		return nil, cli.Blame("replica-leases", err)
	}
	log.Info("replicas counted by their leases", "replicas", leases.Count())
	return leases, nil
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
	return nil, cli.Blame("kubeconfig", err)
}
