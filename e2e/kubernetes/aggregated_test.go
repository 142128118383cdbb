//go:build linux

package kubernetes

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// The aggregated API: group tunnel-e2e.example.com/v1alpha1 with one
// cluster-scoped read-only resource, echoes, served by the test process in
// the node namespace behind Service "aggapi" (ClusterIP the 30th of the
// service range, endpoint the 30th of the pod range).
const (
	aggGroup   = "tunnel-e2e.example.com"
	aggVersion = "v1alpha1"
	aggName    = "aggapi"
	aggIndex   = 30
	aggPort    = 443
	aggTarget  = 8443
)

// aggregatedAPI is a tiny API server for the aggregator: discovery for its
// group version, and echoes, each saying which user kube-apiserver's front
// proxy presented. It only answers requests that carry kube-apiserver's
// front-proxy client certificate.
func aggregatedAPI() http.Handler {
	gv := aggGroup + "/" + aggVersion
	mux := http.NewServeMux()
	mux.HandleFunc("/apis/"+gv, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{
			"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
			"resources": []map[string]any{{
				"name": "echoes", "singularName": "echo", "namespaced": false, "kind": "Echo", "verbs": []string{"get", "list"},
			}},
		})
	})
	echo := func(name string, r *http.Request) map[string]any {
		return map[string]any{
			"kind": "Echo", "apiVersion": gv, "metadata": map[string]any{"name": name},
			"user": r.Header.Get("X-Remote-User"), "servedFrom": "node",
		}
	}
	mux.HandleFunc("/apis/"+gv+"/echoes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{
			"kind": "EchoList", "apiVersion": gv, "metadata": map[string]any{},
			"items": []any{echo("from-node", r)},
		})
	})
	mux.HandleFunc("/apis/"+gv+"/echoes/{name}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, echo(r.PathValue("name"), r))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "front-proxy-client" {
			http.Error(w, "front-proxy client certificate required", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// TestAggregatedAPI registers an APIService backed by a Service reachable
// only in the node namespace and reads it with kubectl: discovery, a list
// and a get, all through the tunnel with the front proxy's identity intact.
func TestAggregatedAPI(t *testing.T) {
	requireEnv(t)
	c := newCluster(t, clusterOpts{mode: modeTCP, routes: routesCerts})
	clusterIP, podIP := c.tp.serviceIP(aggIndex), c.tp.podIP(aggIndex)
	c.pki.issue(t, aggName, leafSpec{cn: aggName, server: true, dns: []string{serviceHost(aggName)}, ips: []netip.Addr{clusterIP, podIP}})
	c.tp.addNodeAddr(t, clusterIP)
	c.tp.addNodeAddr(t, podIP)
	for _, addr := range []string{hostPort(clusterIP, aggPort), hostPort(podIP, aggTarget)} {
		serveHTTP(t, c.tp.node, addr, c.pki.serverTLS(t, aggName, true), aggregatedAPI())
	}
	c.createService(t, aggName, clusterIP, aggPort, aggTarget, podIP)

	apiService := fmt.Sprintf(`apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: %[2]s.%[1]s
spec:
  group: %[1]s
  version: %[2]s
  groupPriorityMinimum: 1000
  versionPriority: 15
  service:
    namespace: %[3]s
    name: %[4]s
    port: %[5]d
  caBundle: %[6]s
`, aggGroup, aggVersion, namespace, aggName, aggPort, base64PEM(c.pki.caPEM(t)))
	if out, err := c.kubectl(t, strings.NewReader(apiService), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply APIService: %v\n%s", err, out)
	}
	start := time.Now()
	eventually(t, startTimeout, func() (bool, string) {
		out, err := c.kubectl(t, nil, "get", "apiservice", aggVersion+"."+aggGroup,
			"-o", `jsonpath={.status.conditions[?(@.type=="Available")].status}/{.status.conditions[?(@.type=="Available")].message}`)
		return err == nil && strings.HasPrefix(out, "True/"), "APIService not Available: " + out
	})
	t.Logf("APIService Available after %s", time.Since(start).Round(time.Millisecond))

	t.Run("get --raw list", func(t *testing.T) {
		out := c.mustKubectl(t, "get", "--raw", "/apis/"+aggGroup+"/"+aggVersion+"/echoes")
		if !strings.Contains(out, `"name":"from-node"`) || !strings.Contains(out, `"user":"test-admin"`) {
			t.Fatalf("list = %s; want item from-node with user test-admin", out)
		}
	})
	t.Run("get --raw one", func(t *testing.T) {
		out := c.mustKubectl(t, "get", "--raw", "/apis/"+aggGroup+"/"+aggVersion+"/echoes/hello")
		if !strings.Contains(out, `"name":"hello"`) {
			t.Fatalf("get = %s; want echo hello", out)
		}
	})
	t.Run("get by discovery", func(t *testing.T) {
		out := c.mustKubectl(t, "get", "echoes."+aggGroup, "-o", "name")
		if strings.TrimSpace(out) != "echo."+aggGroup+"/from-node" {
			t.Fatalf("kubectl get echoes -o name = %q", out)
		}
	})
	t.Run("no agent", func(t *testing.T) {
		c.agent.kill(t)
		c.waitAgentGone(t)
		out, err := c.kubectl(t, nil, "get", "--raw", "/apis/"+aggGroup+"/"+aggVersion+"/echoes")
		if err == nil {
			t.Fatalf("aggregated API answered with no agent: %s", out)
		}
		t.Logf("aggregated API with no agent: %s", strings.TrimSpace(out))
		c.startAgent(t)
		eventually(t, kubectlTimeout, func() (bool, string) {
			out, err := c.kubectl(t, nil, "get", "--raw", "/apis/"+aggGroup+"/"+aggVersion+"/echoes")
			return err == nil, "aggregated API after the agent's restart: " + out
		})
	})
}
