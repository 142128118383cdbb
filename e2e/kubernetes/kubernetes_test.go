//go:build linux

package kubernetes

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// allRoutes is every route source. With routes from --kubeconfig
// kube-apiserver dials kubelets by node name (its default address
// preference), with routes from certificates by IP, so both ways of
// routing a kubelet dial are covered in every mode.
var allRoutes = []routeSource{routesKube, routesCerts}

// TestKubectlThroughTunnel runs kube-apiserver with each of the project's
// egress selector files, and tunnel-server with each route source, and
// checks every kubectl command that reaches a node: logs (also followed),
// exec with stdin, attach, port-forward, and the node, pod and service
// proxies; then kills the agent, checks the error kube-apiserver reports,
// and that a new agent makes it work again.
func TestKubectlThroughTunnel(t *testing.T) {
	requireEnv(t)
	for _, mode := range allModes {
		t.Run(string(mode), func(t *testing.T) {
			for _, routes := range allRoutes {
				t.Run("routes="+string(routes), func(t *testing.T) {
					c := newCluster(t, clusterOpts{mode: mode, routes: routes, kubeletByIP: routes == routesCerts})
					c.kubectlChecks(t)
					t.Run("agent killed and restarted", c.checkAgentKill)
				})
			}
		})
	}
}

// agentGoneErrors is, per mode, what kubectl logs prints while the node has
// no agent: kube-apiserver's error around tunnel-server's reason. HOSTPORT
// and HOST stand for the kubelet's address as kube-apiserver dials it (the
// node name, or its IP with kubeletByIP), SOCKET for the unix socket's
// path. Over gRPC kube-apiserver shows only the DIAL_RSP's error, in which
// tunnel-server puts the status code itself.
var agentGoneErrors = map[egressMode]string{
	modeUDS:  `Error from server: Get "https://HOSTPORT/containerLogs/default/web/app": proxy error from SOCKET while dialing HOSTPORT, code 502: 502 no agent for HOST`,
	modeTCP:  `Error from server: Get "https://HOSTPORT/containerLogs/default/web/app": proxy error from 127.0.0.1:8131 while dialing HOSTPORT, code 502: 502 no agent for HOST`,
	modeGRPC: `Error from server: Get "https://HOSTPORT/containerLogs/default/web/app": code 502 (Bad Gateway): no agent for HOST`,
}

// agentGoneError returns the cluster's expected agentGoneErrors text.
func (c *cluster) agentGoneError() string {
	host := nodeName
	if c.opts.kubeletByIP {
		host = c.tp.nodeIP.String()
	}
	return strings.NewReplacer("HOSTPORT", net.JoinHostPort(host, strconv.Itoa(kubeletPort)), "HOST", host).Replace(agentGoneErrors[c.opts.mode])
}

// checkAgentKill kills the agent with SIGKILL while kubectl logs -f runs:
// the follower must end, kubectl logs must fail with tunnel-server's
// reason, and a new agent must make kubectl logs work again.
func (c *cluster) checkAgentKill(t *testing.T) {
	follow := c.startKubectl(t, "logs", "-f", webName, "-c", webContainer)
	follow.waitLog(t, regexp.MustCompile(`web: line 3\n`), kubectlTimeout)

	killed := time.Now()
	c.agent.kill(t)
	c.waitAgentGone(t)
	select {
	case <-follow.done:
		t.Logf("kubectl logs -f ended %s after the agent was killed (%v)", time.Since(killed).Round(time.Millisecond), follow.err)
	case <-time.After(kubectlTimeout):
		t.Fatalf("kubectl logs -f still running %s after the agent was killed", kubectlTimeout)
	}

	out, err := c.kubectl(t, nil, "logs", webName, "-c", webContainer)
	if err == nil {
		t.Fatalf("kubectl logs succeeded with no agent: %q", out)
	}
	got := strings.TrimSpace(strings.ReplaceAll(strings.ReplaceAll(out, c.udsPath(), "SOCKET"), c.grpcPath(), "SOCKET"))
	t.Logf("kubectl logs with no agent (%s): %s", c.opts.mode, got)
	if want := c.agentGoneError(); got != want {
		t.Errorf("kubectl logs with no agent:\n got %s\nwant %s", got, want)
	}

	c.startAgent(t)
	eventually(t, kubectlTimeout, func() (bool, string) {
		out, err := c.kubectl(t, nil, "logs", webName, "-c", webContainer)
		return err == nil && out == c.webLog(t), "kubectl logs after the agent's restart: " + out
	})
}
