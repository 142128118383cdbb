//go:build linux

package kubernetes

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The webhook backend: Service "webhook" (its ClusterIP the 20th of the
// service range, port 443) in front of a pod address (the 20th of the pod
// range, port 8443), both served by the test process inside the node
// namespace. The node namespace has no kube-proxy, so the ClusterIP is an
// address of the node namespace's own, where the server listens too.
const (
	webhookName        = "webhook"
	webhookIndex       = 20
	webhookPort        = 443
	webhookTargetPort  = 8443
	webhookDirectAddr  = "127.0.0.1:9443" // the same server in the control plane, reached without the tunnel
	webhookDenyLabel   = "tunnel-e2e.example.com/deny"
	webhookNSLabel     = "tunnel-e2e.example.com/webhook"
	webhookDeniedMatch = "denied by the tunnel-e2e webhook"
)

// Namespaces, each selected by one webhook configuration.
const (
	nsTunnel     = "wh-tunnel"      // timeoutSeconds 1, through the tunnel
	nsTunnelLong = "wh-tunnel-long" // timeoutSeconds 30, through the tunnel
	nsDirect     = "wh-direct"      // timeoutSeconds 1, by URL in the control plane
)

// webhookServer is a validating admission webhook: it allows everything
// but objects labelled webhookDenyLabel=true, and counts its calls.
type webhookServer struct {
	where string
	calls atomic.Int64
}

func (w *webhookServer) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w.calls.Add(1)
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
		http.Error(rw, fmt.Sprintf("bad AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	resp := &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
	var obj metav1.PartialObjectMetadata
	if json.Unmarshal(review.Request.Object.Raw, &obj) == nil && obj.Labels[webhookDenyLabel] == "true" {
		resp.Allowed = false
		resp.Result = &metav1.Status{Code: http.StatusForbidden, Message: webhookDeniedMatch + " (" + w.where + ")"}
	}
	review.Request, review.Response = nil, resp
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(&review)
}

// webhookBackend starts the webhook server in the node namespace, on the
// Service's ClusterIP and on its endpoint, creates the Service, and starts
// the same server in the control plane for direct calls. The servers offer
// HTTP/2, over which kube-apiserver sends every call on one connection,
// unless http1 (as controller-runtime's webhook servers do by default):
// then it keeps a pool of HTTP/1.1 keep-alive connections.
func (c *cluster) webhookBackend(t *testing.T, http1 bool) (tunneled, direct *webhookServer) {
	t.Helper()
	clusterIP, podIP := c.tp.serviceIP(webhookIndex), c.tp.podIP(webhookIndex)
	c.pki.issue(t, "webhook", leafSpec{cn: webhookName, server: true,
		dns: []string{serviceHost(webhookName)},
		ips: []netip.Addr{clusterIP, podIP, netip.MustParseAddr("127.0.0.1")}})
	tunneled, direct = &webhookServer{where: "node"}, &webhookServer{where: "control plane"}
	c.tp.addNodeAddr(t, clusterIP)
	c.tp.addNodeAddr(t, podIP)
	serve := func(ns netns, addr string, h http.Handler) {
		srv := &http.Server{Handler: h, TLSConfig: c.pki.serverTLS(t, "webhook", false), ReadHeaderTimeout: time.Minute}
		if http1 {
			srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		}
		serveHTTPServer(t, ns, addr, srv)
	}
	serve(c.tp.node, hostPort(clusterIP, webhookPort), tunneled)
	serve(c.tp.node, hostPort(podIP, webhookTargetPort), tunneled)
	serve(c.tp.cp, webhookDirectAddr, direct)
	c.createService(t, webhookName, clusterIP, webhookPort, webhookTargetPort, podIP)
	return tunneled, direct
}

// registerWebhooks creates the three namespaces and a
// ValidatingWebhookConfiguration with one webhook for each: nsTunnel and
// nsTunnelLong call Service "webhook" through the tunnel (timeouts 1 s and
// 30 s), nsDirect calls the control plane's copy by URL (egress
// "controlplane": Direct). All fail closed. It waits until each denies.
func (c *cluster) registerWebhooks(t *testing.T) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	for _, ns := range []string{nsTunnel, nsTunnelLong, nsDirect} {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{webhookNSLabel: ns}}}
		if _, err := c.client.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create namespace %s: %v", ns, err)
		}
	}
	path, port := "/validate", int32(webhookPort)
	service := admissionregistrationv1.WebhookClientConfig{
		Service:  &admissionregistrationv1.ServiceReference{Namespace: namespace, Name: webhookName, Path: &path, Port: &port},
		CABundle: c.pki.caPEM(t),
	}
	url := "https://" + webhookDirectAddr + path
	direct := admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: c.pki.caPEM(t)}
	cfg := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "tunnel-e2e"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{
			webhook(nsTunnel, service, 1), webhook(nsTunnelLong, service, 30), webhook(nsDirect, direct, 1),
		},
	}
	if _, err := c.client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, cfg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ValidatingWebhookConfiguration: %v", err)
	}
	// Each verdict must come from the server the webhook names: the node's
	// through the tunnel, the control plane's directly.
	for ns, where := range map[string]string{nsTunnel: "node", nsTunnelLong: "node", nsDirect: "control plane"} {
		want := webhookDeniedMatch + " (" + where + ")"
		eventually(t, startTimeout, func() (bool, string) {
			err := c.createConfigMap(t.Context(), ns, true)
			return err != nil && strings.Contains(err.Error(), want), fmt.Sprintf("webhook for %s not denying with %q yet: %v", ns, want, err)
		})
	}
}

// webhookDest is the address kube-apiserver dials for Service "webhook":
// its endpoint with --enable-aggregator-routing, else its ClusterIP.
func (c *cluster) webhookDest() netip.Addr {
	if slices.Contains(c.opts.apiserverArgs, "--enable-aggregator-routing") {
		return c.tp.podIP(webhookIndex)
	}
	return c.tp.serviceIP(webhookIndex)
}

// webhook is a fail-closed validating webhook for ConfigMap creations in
// namespace ns.
func webhook(ns string, cc admissionregistrationv1.WebhookClientConfig, timeoutSeconds int32) admissionregistrationv1.ValidatingWebhook {
	fail, none := admissionregistrationv1.Fail, admissionregistrationv1.SideEffectClassNone
	return admissionregistrationv1.ValidatingWebhook{
		Name:                    ns + ".tunnel-e2e.example.com",
		ClientConfig:            cc,
		Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}}}},
		NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{webhookNSLabel: ns}},
		FailurePolicy:           &fail,
		SideEffects:             &none,
		TimeoutSeconds:          &timeoutSeconds,
		AdmissionReviewVersions: []string{"v1"},
	}
}

// createConfigMap creates (dry run: admission runs, nothing is stored) a
// ConfigMap in ns, labelled for denial if deny.
func (c *cluster) createConfigMap(ctx context.Context, ns string, deny bool) error {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "cm-", Namespace: ns}}
	if deny {
		cm.Labels = map[string]string{webhookDenyLabel: "true"}
	}
	_, err := c.client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	return err
}

// TestAdmissionWebhook calls a validating webhook whose Service is only
// reachable in the node namespace: through its ClusterIP (the agent's
// default route), and with --enable-aggregator-routing through its
// endpoint (the node's pod range). It checks the webhook's verdict arrives,
// a 1 s timeout holds under concurrent load, and with no agent the call
// fails at once with tunnel-server's reason; and it measures latency
// through the tunnel against a direct call in the same run.
func TestAdmissionWebhook(t *testing.T) {
	requireEnv(t)
	for _, tc := range []struct {
		name string
		opts clusterOpts
	}{
		{"clusterIP/" + string(modeUDS), clusterOpts{mode: modeUDS}},
		{"aggregator-routing/" + string(modeGRPC), clusterOpts{mode: modeGRPC, apiserverArgs: []string{"--enable-aggregator-routing"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, tc.opts)
			tunneled, direct := c.webhookBackend(t, false)
			c.registerWebhooks(t)
			t.Run("latency", func(t *testing.T) { c.webhookLatency(t, tunneled, direct) })
			t.Run("timeout 1s under load", c.webhookUnderLoad)
			t.Run("no agent", c.webhookNoAgent)
		})
	}
}

// webhookLatency times allowed creations in nsTunnel and nsDirect,
// interleaved, as the client sees them and as kube-apiserver's own
// histogram apiserver_admission_webhook_admission_duration_seconds does.
func (c *cluster) webhookLatency(t *testing.T, tunneled, direct *webhookServer) {
	const n = 200
	var viaTunnel, viaDirect []time.Duration
	before := [2]int64{tunneled.calls.Load(), direct.calls.Load()}
	for range n {
		for _, ns := range []string{nsTunnel, nsDirect} {
			start := time.Now()
			if err := c.createConfigMap(t.Context(), ns, false); err != nil {
				t.Fatalf("create in %s: %v", ns, err)
			}
			if ns == nsTunnel {
				viaTunnel = append(viaTunnel, time.Since(start))
			} else {
				viaDirect = append(viaDirect, time.Since(start))
			}
		}
	}
	if got := [2]int64{tunneled.calls.Load() - before[0], direct.calls.Load() - before[1]}; got[0] < n || got[1] < n {
		t.Fatalf("webhook calls: %d through the tunnel, %d direct; want at least %d each", got[0], got[1], n)
	}
	t.Logf("ConfigMap create (dry run) with a webhook, %d each, client-observed: through the tunnel p50 %s p99 %s; direct p50 %s p99 %s",
		n, quantile(viaTunnel, 0.5), quantile(viaTunnel, 0.99), quantile(viaDirect, 0.5), quantile(viaDirect, 0.99))
	metrics := c.apiserverMetrics(t)
	for _, ns := range []string{nsTunnel, nsDirect} {
		h := parseHistogram(metrics, "apiserver_admission_webhook_admission_duration_seconds",
			`name="`+ns+`.tunnel-e2e.example.com"`, `rejected="false"`)
		t.Logf("kube-apiserver's webhook latency for %s (%d calls, from its histogram): p50 %s p99 %s",
			ns, h.count(), h.quantile(0.5), h.quantile(0.99))
	}
	logEgressMetrics(t, metrics)
}

// webhookUnderLoad sends concurrent creations through the tunnel to the
// webhook with timeoutSeconds 1: none may fail.
func (c *cluster) webhookUnderLoad(t *testing.T) {
	const workers, each = 16, 25
	var (
		mu        sync.Mutex
		latencies []time.Duration
		failures  []string
		wg        sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for range each {
				s := time.Now()
				err := c.createConfigMap(t.Context(), nsTunnel, false)
				mu.Lock()
				latencies = append(latencies, time.Since(s))
				if err != nil {
					failures = append(failures, err.Error())
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d creations from %d workers through the 1 s webhook in %s (%.0f/s): p50 %s p99 %s max %s, %d failed",
		workers*each, workers, elapsed.Round(time.Millisecond), float64(workers*each)/elapsed.Seconds(),
		quantile(latencies, 0.5), quantile(latencies, 0.99), quantile(latencies, 1), len(failures))
	if len(failures) > 0 {
		t.Fatalf("%d of %d calls failed; first: %s", len(failures), workers*each, failures[0])
	}
}

// webhookNoAgent kills the agent: a fail-closed webhook behind the tunnel
// must then fail fast, with tunnel-server's reason, not hang until its
// timeout (30 s for nsTunnelLong).
func (c *cluster) webhookNoAgent(t *testing.T) {
	c.agent.kill(t)
	c.waitAgentGone(t)
	for _, ns := range []string{nsTunnelLong, nsTunnel} {
		start := time.Now()
		err := c.createConfigMap(t.Context(), ns, false)
		took := time.Since(start)
		if err == nil {
			t.Fatalf("create in %s succeeded with no agent: the webhook must fail closed", ns)
		}
		t.Logf("%s with no agent, after %s: %v", ns, took.Round(time.Millisecond), err)
		if reason := "no agent for " + c.webhookDest().String(); !strings.Contains(err.Error(), reason) {
			t.Errorf("%s: error lacks tunnel-server's reason %q: %v", ns, reason, err)
		}
		if took > 5*time.Second {
			t.Errorf("%s: failing took %s; with no agent it must fail at once", ns, took)
		}
	}
	c.startAgent(t)
	eventually(t, kubectlTimeout, func() (bool, string) {
		err := c.createConfigMap(t.Context(), nsTunnel, false)
		return err == nil, fmt.Sprintf("webhook after the agent's restart: %v", err)
	})
}

// quantile returns the q-quantile of ds (nearest rank), rounded for
// printing.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	i = max(0, min(i, len(s)-1))
	return s[i].Round(10 * time.Microsecond)
}
