package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

// High availability: the flags that tell a replica who it is and how many
// share its agent address (README "High availability"); --replica-leases,
// the Kubernetes alternative to --server-count, is in kube.go.

// haFlags are the replica-set flags.
type haFlags struct {
	serverCount int
}

// bindHA adds the replica-set flags; kube.go adds the Lease flags after them.
func (f *serverFlags) bindHA(fs *pflag.FlagSet) {
	fs.StringVar(&f.cfg.ID, "server-id", "", "ID of this server replica (default: random)")
	fs.IntVar(&f.ha.serverCount, "server-count", 1, "tunnel-server replicas sharing the agents' server address, this one included; every agent keeps a session to each (give every replica a distinct --server-id)")
	fs.StringVar(&f.cfg.AdvertiseAddress, "advertise-address", "", "host:port where agents reach this replica directly, without the shared address: agents that lose their session to it try there first (empty: agents look for it through the shared address)")
}

// applyHA sets the server's replica count from --server-count.
func (f *serverFlags) applyHA() error {
	if f.ha.serverCount < 1 {
		return &cli.FlagError{Flag: "server-count", Msg: fmt.Sprintf("must be at least 1, not %d", f.ha.serverCount)}
	}
	if f.ha.serverCount > 1 {
		f.cfg.Replicas = tunnel.FixedReplicas(f.ha.serverCount)
	}
	return nil
}
