package deploy

import (
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"sigs.k8s.io/yaml"
)

// The egress modes as kustomize overlays: deploy/kubernetes/overlays/MODE
// (applied to the cluster) and MODE/control-plane (the static pod), beside
// deploy/egress-selector/MODE.yaml (kube-apiserver's file). Each must render,
// keep its parts apart, and agree with its egress selector file.

// frontendFlags are the server flags that open a frontend for kube-apiserver.
var frontendFlags = []string{"uds-path", "grpc-uds-path", "frontend-listen-address"}

func TestOverlaysMatchEgressSelectors(t *testing.T) {
	modes := overlays(t)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			checkClusterPart(t, render(t, path.Join("kubernetes/overlays", mode)))
			pod := checkControlPlanePart(t, render(t, path.Join("kubernetes/overlays", mode, "control-plane")))
			if pod == nil {
				return
			}
			rel := path.Join("egress-selector", mode+".yaml")
			if _, err := os.Stat(filepath.Join(deployDir, rel)); err != nil {
				t.Fatalf("overlay %s has no egress selector file of its name: %v", mode, err)
			}
			checkFrontend(t, rel, pod)
		})
	}
	for _, rel := range deployFiles(t, "egress-selector", ".yaml") {
		if mode := strings.TrimSuffix(path.Base(rel), ".yaml"); !slices.Contains(modes, mode) {
			t.Errorf("%s has no overlay deploy/kubernetes/overlays/%s", rel, mode)
		}
	}
}

// checkClusterPart requires what `kubectl apply -k` applies to hold the
// agents and the server's RBAC, and no Pod: applied, a static pod would be
// scheduled on any node.
func checkClusterPart(t *testing.T, ms []manifest) {
	t.Helper()
	kinds := map[string]bool{}
	for _, m := range ms {
		switch m.obj.(type) {
		case *corev1.Pod:
			t.Errorf("%s: a Pod in what kubectl apply -k applies", m.where)
		case *appsv1.DaemonSet:
			kinds["DaemonSet"] = true
		case *rbacv1.ClusterRoleBinding:
			kinds["ClusterRoleBinding"] = true
		}
	}
	if !kinds["DaemonSet"] || !kinds["ClusterRoleBinding"] {
		t.Errorf("the cluster part renders %v; want the agents' DaemonSet and the server's RBAC", kinds)
	}
}

// checkControlPlanePart requires the control-plane render to be exactly
// one Pod in kube-system on the host network, what the kubelet reads from
// /etc/kubernetes/manifests, and returns its tunnel-server container.
func checkControlPlanePart(t *testing.T, ms []manifest) *container {
	t.Helper()
	if len(ms) != 1 {
		t.Errorf("the control-plane part renders %d objects; want the static pod alone", len(ms))
		return nil
	}
	pod, ok := ms[0].obj.(*corev1.Pod)
	if !ok || pod.Namespace != "kube-system" || !pod.Spec.HostNetwork {
		t.Errorf("%s: want a Pod in kube-system with hostNetwork", ms[0].where)
		return nil
	}
	for _, c := range containers(ms) {
		if c.binary() == serverName {
			return &c
		}
	}
	t.Errorf("%s: runs no %s", ms[0].where, serverName)
	return nil
}

// checkFrontend requires the static pod to open exactly the frontend the
// egress selector file rel dials.
func checkFrontend(t *testing.T, rel string, c *container) {
	t.Helper()
	cfg := readEgress(t, rel)
	conn := clusterConnection(t, rel, cfg)
	args := c.flagArgs()
	var want string // the frontend flag the file needs
	switch tr := conn.Transport; {
	case tr.UDS != nil && conn.ProxyProtocol == apiserver.ProtocolGRPC:
		want = "grpc-uds-path"
		wantFlag(t, c.where, args, want, tr.UDS.UDSName)
	case tr.UDS != nil:
		want = "uds-path"
		wantFlag(t, c.where, args, want, tr.UDS.UDSName)
	case tr.TCP != nil:
		want = "frontend-listen-address"
		u, err := url.Parse(tr.TCP.URL)
		if err != nil || u.Scheme != "https" || tr.TCP.TLSConfig == nil {
			t.Fatalf("%s: %q is not an https URL with a tlsConfig (%v)", rel, tr.TCP.URL, err)
		}
		wantFlag(t, c.where, args, want, u.Host)
		if _, ok := flagValue(args, "frontend-ca-file"); !ok {
			t.Errorf("%s: --frontend-listen-address without --frontend-ca-file", c.where)
		}
	}
	for _, f := range frontendFlags {
		if _, ok := flagValue(args, f); ok && f != want {
			t.Errorf("%s: --%s opens a frontend %s does not use", c.where, f, rel)
		}
	}
}

func wantFlag(t *testing.T, where string, args []string, flag, want string) {
	t.Helper()
	if got, ok := flagValue(args, flag); !ok || got != want {
		t.Errorf("%s: --%s=%q; the egress selector file dials %q", where, flag, got, want)
	}
}

// clusterConnection returns the "cluster" egress selection's connection.
func clusterConnection(t *testing.T, rel string, cfg *apiserver.EgressSelectorConfiguration) apiserver.Connection {
	t.Helper()
	clusterTransport(t, rel, cfg) // checks the protocol and transport
	for _, s := range cfg.EgressSelections {
		if s.Name == "cluster" {
			return s.Connection
		}
	}
	panic("unreachable")
}

// kustomization is the part of a kustomization.yaml this package reads.
type kustomization struct {
	Resources []string `json:"resources"`
	Images    []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// TestKustomizationsListEveryFile requires every manifest under
// deploy/kubernetes to be a resource of the kustomization beside it:
// kustomize ignores the others, so an edit to one would ship nothing.
func TestKustomizationsListEveryFile(t *testing.T) {
	root := filepath.Join(deployDir, "kubernetes")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") || d.Name() == "kustomization.yaml" {
			return err
		}
		rel, _ := filepath.Rel(deployDir, p)
		data, err := os.ReadFile(filepath.Join(filepath.Dir(p), "kustomization.yaml"))
		if err != nil {
			t.Errorf("%s: no kustomization.yaml beside it", rel)
			return nil
		}
		var k kustomization
		if err := yaml.Unmarshal(data, &k); err != nil {
			t.Errorf("%s: %v", filepath.Dir(rel), err)
		} else if !slices.Contains(k.Resources, d.Name()) {
			t.Errorf("%s: not among the resources of the kustomization beside it", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestManifestsRunMakeImage requires every container of ours, in every
// render, to run the image `make image` tags: `kubectl apply -k` after
// `make image` runs what was built.
func TestManifestsRunMakeImage(t *testing.T) {
	ref := makeVar(t, "IMAGE")
	if ref == "" {
		t.Fatal("the Makefile sets no IMAGE")
	}
	n := 0
	for _, c := range containers(loadManifests(t)) {
		if c.binary() == "" {
			continue
		}
		n++
		if c.c.Image != ref {
			t.Errorf("%s: image %q; make image builds %q", c.where, c.c.Image, ref)
		}
	}
	if n == 0 {
		t.Fatal("no container runs our binaries")
	}
	t.Logf("%d containers run %s", n, ref)
}
