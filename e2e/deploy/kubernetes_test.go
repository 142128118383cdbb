package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// The manifests are kustomizations (deploy/kubernetes): base/ holds the
// cluster's objects, control-plane/ the static pod, and each
// overlays/MODE/ renders the cluster's part of one egress mode and
// overlays/MODE/control-plane/ its static pod. The checks below run on what
// kustomize renders, as `kubectl apply -k` and `kubectl kustomize` would
// produce it, through the kustomize Go API (sigs.k8s.io/kustomize/api,
// the library kubectl embeds).

// manifest is one object rendered from a kustomization under
// deploy/kubernetes.
type manifest struct {
	where string // "kubernetes/DIR: Kind namespace/name", for messages
	obj   runtime.Object
}

// strictDecoder decodes YAML or JSON into the typed objects of the API
// groups our manifests use, failing on unknown and duplicate fields. A kind
// outside these groups fails too: add its group here when a manifest needs
// it.
func strictDecoder() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme, certificatesv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

// yamlDocuments splits a multi-document YAML file, leaving out documents
// that hold only comments.
func yamlDocuments(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if hasContent(doc) {
			docs = append(docs, doc)
		}
	}
}

func hasContent(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") && l != "---" {
			return true
		}
	}
	return false
}

// overlays returns the egress modes: the directories under
// deploy/kubernetes/overlays.
func overlays(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(deployDir, "kubernetes", "overlays"))
	if err != nil {
		t.Fatal(err)
	}
	var modes []string
	for _, e := range ents {
		if e.IsDir() {
			modes = append(modes, e.Name())
		}
	}
	if len(modes) == 0 {
		t.Fatal("no deploy/kubernetes/overlays")
	}
	return modes
}

// renderedDirs returns the kustomizations users render, relative to
// deploy/: each overlay's cluster part and its control-plane part.
func renderedDirs(t *testing.T) []string {
	var dirs []string
	for _, m := range overlays(t) {
		dirs = append(dirs, path.Join("kubernetes/overlays", m), path.Join("kubernetes/overlays", m, "control-plane"))
	}
	return dirs
}

// kustomize renders the kustomization in deploy/rel as `kubectl kustomize`
// does (default options: files only from inside each kustomization root).
func kustomize(rel string) ([]byte, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(deployDir, rel))
	if err != nil {
		return nil, err
	}
	return res.AsYaml()
}

// render renders deploy/rel and decodes every object strictly; each failure
// is a test error.
func render(t *testing.T, rel string) []manifest {
	t.Helper()
	out, err := kustomize(rel)
	if err != nil {
		t.Errorf("kustomize %s: %v", rel, err)
		return nil
	}
	docs, err := yamlDocuments(out)
	if err != nil {
		t.Errorf("%s: %v", rel, err)
		return nil
	}
	if len(docs) == 0 {
		t.Errorf("%s: renders no objects", rel)
	}
	dec := strictDecoder()
	var ms []manifest
	for i, doc := range docs {
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Errorf("%s: object %d: %v", rel, i+1, err)
			continue
		}
		m, _ := obj.(metav1.Object)
		ms = append(ms, manifest{
			where: fmt.Sprintf("%s: %s %s/%s", rel, gvk.Kind, m.GetNamespace(), m.GetName()),
			obj:   obj,
		})
	}
	return ms
}

// loadManifests renders every kustomization users render and decodes each
// object strictly; each failure is a test error.
func loadManifests(t *testing.T) []manifest {
	t.Helper()
	var out []manifest
	for _, rel := range renderedDirs(t) {
		out = append(out, render(t, rel)...)
	}
	return out
}

func TestManifestsDecodeStrictly(t *testing.T) {
	ms := loadManifests(t)
	for _, m := range ms {
		t.Logf("decoded %s", m.where)
	}
	// The decoder must be strict, or the check above proves little.
	dec := strictDecoder()
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountServiceAcountToken: false\n",
		"duplicate field": "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nmetadata: {name: y}\n",
		"unknown kind":    "apiVersion: v1\nkind: ServiceAcount\nmetadata: {name: x}\n",
	} {
		if _, _, err := dec.Decode([]byte(doc), nil, nil); err == nil {
			t.Errorf("the strict decoder accepts a manifest with an %s", name)
		}
	}
}

// container is one container of a pod template in the manifests.
type container struct {
	where string
	pod   *corev1.PodSpec
	c     *corev1.Container
}

// binary returns tunnel-server or tunnel-agent if the container runs one of
// them, else "".
func (c container) binary() string {
	if len(c.c.Command) == 0 {
		return ""
	}
	switch b := path.Base(c.c.Command[0]); b {
	case serverName, agentName:
		return b
	}
	return ""
}

// flagArgs returns the container's arguments after the binary.
func (c container) flagArgs() []string {
	return append(append([]string{}, c.c.Command[1:]...), c.c.Args...)
}

// podSpec returns the pod spec and pod labels of workload objects.
func podSpec(obj runtime.Object) (*corev1.PodSpec, map[string]string, bool) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &o.Spec, o.Labels, true
	case *appsv1.DaemonSet:
		return &o.Spec.Template.Spec, o.Spec.Template.Labels, true
	case *appsv1.Deployment:
		return &o.Spec.Template.Spec, o.Spec.Template.Labels, true
	}
	return nil, nil, false
}

// containers returns every container of every pod template.
func containers(ms []manifest) []container {
	var out []container
	for _, m := range ms {
		spec, _, ok := podSpec(m.obj)
		if !ok {
			continue
		}
		for i := range spec.InitContainers {
			out = append(out, container{m.where + " init container " + spec.InitContainers[i].Name, spec, &spec.InitContainers[i]})
		}
		for i := range spec.Containers {
			out = append(out, container{m.where + " container " + spec.Containers[i].Name, spec, &spec.Containers[i]})
		}
	}
	return out
}

// manifestInvocations returns the command lines of our binaries in the
// manifests.
func manifestInvocations(t *testing.T) []invocation {
	var out []invocation
	for _, c := range containers(loadManifests(t)) {
		if b := c.binary(); b != "" {
			out = append(out, invocation{where: c.where, binary: b, args: c.flagArgs()})
		}
	}
	return out
}

// flagValue returns the value of --name=value in args.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func TestManifestsAgree(t *testing.T) {
	ms := loadManifests(t)
	if t.Failed() {
		return
	}
	var ours []string
	for _, c := range containers(ms) {
		if c.binary() == "" {
			if strings.Contains(c.c.Image, "tunnel") {
				t.Errorf("%s: runs our image without naming the binary in command", c.where)
			}
			continue
		}
		ours = append(ours, c.binary())
		checkMounts(t, c)
		checkProbes(t, c)
		checkEnvRefs(t, c)
	}
	for _, want := range []string{serverName, agentName} {
		if !strings.Contains(strings.Join(ours, " "), want) {
			t.Errorf("no manifest runs %s", want)
		}
	}
	checkWorkloads(t, ms)
	checkRBAC(t, ms)
}

// checkMounts requires each volume mount to name a volume of the pod and
// each file a flag names to lie under a mount.
func checkMounts(t *testing.T, c container) {
	vols := map[string]bool{}
	for _, v := range c.pod.Volumes {
		vols[v.Name] = true
	}
	for _, m := range c.c.VolumeMounts {
		if !vols[m.Name] {
			t.Errorf("%s: volume mount %q names no volume of the pod", c.where, m.Name)
		}
	}
	for _, a := range c.flagArgs() {
		name, val, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		isPath := strings.HasSuffix(name, "-file") || strings.HasSuffix(name, "uds-path") || name == "kubeconfig" && val != "in-cluster"
		if !isPath {
			continue
		}
		under := false
		for _, m := range c.c.VolumeMounts {
			under = under || strings.HasPrefix(val, strings.TrimSuffix(m.MountPath, "/")+"/")
		}
		if !under {
			t.Errorf("%s: --%s=%s is on no volume mount: the container's own filesystem has no such file", c.where, name, val)
		}
	}
}

// checkProbes requires liveness on /livez and readiness on /readyz, both on
// the --admin-listen-address the container passes.
func checkProbes(t *testing.T, c container) {
	addr, ok := flagValue(c.flagArgs(), "admin-listen-address")
	if !ok {
		t.Errorf("%s: no --admin-listen-address=HOST:PORT, so the probes' port is a guess", c.where)
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("%s: --admin-listen-address=%s: %v", c.where, addr, err)
		return
	}
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.c.LivenessProbe, "/livez"}, {"readiness", c.c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", c.where, p.kind)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Port.String() != port || (host != "" && g.Host != host) {
			t.Errorf("%s: %s probe gets %s:%s%s, want %s:%s%s (the admin listener)", c.where, p.kind, g.Host, g.Port.String(), g.Path, host, port, p.path)
		}
	}
}

// envRefRE matches the $(VAR) references Kubernetes expands in command and
// args; an undefined one stays in the argument as literal text.
var envRefRE = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func checkEnvRefs(t *testing.T, c container) {
	defined := map[string]bool{}
	for _, e := range c.c.Env {
		defined[e.Name] = true
	}
	for _, a := range c.flagArgs() {
		for _, m := range envRefRE.FindAllStringSubmatch(a, -1) {
			if !defined[m[1]] {
				t.Errorf("%s: %q refers to $(%s), which the container does not define", c.where, a, m[1])
			}
		}
	}
}

// checkWorkloads checks selectors and, for DaemonSets, that every node
// gets an agent whatever its taints.
func checkWorkloads(t *testing.T, ms []manifest) {
	for _, m := range ms {
		ds, ok := m.obj.(*appsv1.DaemonSet)
		if !ok {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
			t.Errorf("%s: selector %v does not match the template's labels %v (%v)", m.where, ds.Spec.Selector, ds.Spec.Template.Labels, err)
		}
		tolerant := false
		for _, tol := range ds.Spec.Template.Spec.Tolerations {
			tolerant = tolerant || tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
		}
		if !tolerant {
			t.Errorf("%s: no toleration {operator: Exists}: tainted nodes would get no agent", m.where)
		}
	}
}

// checkRBAC requires every binding's role to be defined in the manifests.
func checkRBAC(t *testing.T, ms []manifest) {
	roles := map[string]bool{}
	for _, m := range ms {
		if r, ok := m.obj.(*rbacv1.ClusterRole); ok {
			roles[r.Name] = true
		}
	}
	for _, m := range ms {
		if b, ok := m.obj.(*rbacv1.ClusterRoleBinding); ok {
			if b.RoleRef.Kind != "ClusterRole" || !roles[b.RoleRef.Name] {
				t.Errorf("%s: binds %s %q, which no manifest defines", m.where, b.RoleRef.Kind, b.RoleRef.Name)
			}
		}
	}
}
