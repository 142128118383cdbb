//go:build linux

package kubernetes

import "testing"

// TestKubectlThroughTunnelIPv6 runs TestKubectlThroughTunnel's checks on a
// cluster whose node, pod and service addresses are all IPv6: the Node's
// InternalIP, the pod range, --service-cluster-ip-range, and the link the
// agent reaches the server over.
func TestKubectlThroughTunnelIPv6(t *testing.T) {
	requireEnv(t)
	for _, mode := range allModes {
		t.Run(string(mode), func(t *testing.T) {
			// One route source per mode: kubeconfig for the unix sockets,
			// certificates for TCP.
			routes := routesKube
			if mode == modeTCP {
				routes = routesCerts
			}
			c := newCluster(t, clusterOpts{mode: mode, routes: routes, ipv6: true, kubeletByIP: routes == routesCerts})
			c.kubectlChecks(t)
			t.Run("agent killed and restarted", c.checkAgentKill)
		})
	}
}
