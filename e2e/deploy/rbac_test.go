package deploy

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

// The RBAC tunnel-server's kubeconfig user gets (deploy/kubernetes/base/
// tunnel-server-rbac.yaml) against the API calls its code makes: the
// client-go calls are read from the source of tunnel/kube and
// cmd/tunnel-server, and each must be allowed by a role bound to the user,
// a namespaced resource in the namespace the static pod uses.

// clientGoSources are the files whose client-go calls tunnel-server makes.
var clientGoSources = []string{"tunnel/kube/*.go", "cmd/tunnel-server/*.go"}

// apiUse is one request tunnel-server makes: verb on group/resource.
type apiUse struct{ group, resource, verb string }

func (u apiUse) String() string { return fmt.Sprintf("%s %s.%s", u.verb, u.resource, u.group) }

// Client-go's names for what RBAC names: typed clients' group methods
// (CoordinationV1) and informer factories' (Coordination().V1()), the verb
// of each typed client method, and which resources are namespaced.
var (
	apiGroups  = map[string]string{"Core": "", "Coordination": "coordination.k8s.io"}
	namespaced = map[string]bool{"nodes": false, "leases": true}
	verbs      = map[string]string{"Get": "get", "List": "list", "Watch": "watch", "Create": "create",
		"Update": "update", "UpdateStatus": "update", "Patch": "patch", "Apply": "patch",
		"Delete": "delete", "DeleteCollection": "deletecollection"}
	typedGroupRE = regexp.MustCompile(`^([A-Z][A-Za-z]*?)V\d+((?:alpha|beta)\d+)?$`)
	versionRE    = regexp.MustCompile(`^V\d+((?:alpha|beta)\d+)?$`)
)

// link is one step of a selector chain: a name, called or not.
type link struct {
	name string
	call bool
}

// chainOf flattens a.B(x).C() into [a, B(), C()].
func chainOf(e ast.Expr) []link {
	switch e := e.(type) {
	case *ast.Ident:
		return []link{{e.Name, false}}
	case *ast.SelectorExpr:
		return append(chainOf(e.X), link{e.Sel.Name, false})
	case *ast.CallExpr:
		c := chainOf(e.Fun)
		if len(c) > 0 {
			c[len(c)-1].call = true
		}
		return c
	case *ast.ParenExpr:
		return chainOf(e.X)
	}
	return nil
}

// resource is a group and resource a chain reaches.
type resource struct{ group, resource string }

// scanner collects the API uses of one function.
type scanner struct {
	t     *testing.T
	where string
	vars  map[string]resource // variables holding a typed resource client
	uses  map[apiUse]bool
}

// typed returns the resource of a typed client chain ending in
// ...GroupV1().Resource(ns), and the links after it.
func (s *scanner) typed(c []link) (resource, []link, bool) {
	for i := 0; i+1 < len(c); i++ {
		m := typedGroupRE.FindStringSubmatch(c[i].name)
		if m == nil || !c[i].call || !c[i+1].call {
			continue
		}
		return s.resource(m[1], c[i+1].name), c[i+2:], true
	}
	if len(c) > 1 {
		if r, ok := s.vars[c[0].name]; ok {
			return r, c[1:], true
		}
	}
	return resource{}, nil, false
}

// informer reports an informer factory chain ...Group().V1().Resource().
func (s *scanner) informer(c []link) (resource, bool) {
	for i := 0; i+2 < len(c); i++ {
		if c[i].call && c[i+1].call && c[i+2].call && versionRE.MatchString(c[i+1].name) && !versionRE.MatchString(c[i].name) {
			return s.resource(c[i].name, c[i+2].name), true
		}
	}
	return resource{}, false
}

func (s *scanner) resource(group, name string) resource {
	g, ok := apiGroups[group]
	if !ok {
		s.t.Errorf("%s: client-go group %s: add its API group to apiGroups", s.where, group)
	}
	return resource{g, strings.ToLower(name)}
}

func (s *scanner) use(r resource, verb string) { s.uses[apiUse{r.group, r.resource, verb}] = true }

// visit records the API uses of one node.
func (s *scanner) visit(n ast.Node) bool {
	switch n := n.(type) {
	case *ast.AssignStmt:
		for i, rhs := range n.Rhs {
			if r, rest, ok := s.typed(chainOf(rhs)); ok && len(rest) == 0 && i < len(n.Lhs) {
				if id, ok := n.Lhs[i].(*ast.Ident); ok {
					s.vars[id.Name] = r
				}
			}
		}
	case *ast.CallExpr:
		c := chainOf(n)
		if r, ok := s.informer(c); ok {
			s.use(r, "list") // an informer lists, then watches
			s.use(r, "watch")
		} else if r, rest, ok := s.typed(c); ok && len(rest) > 0 {
			v, known := verbs[rest[0].name]
			if !known {
				s.t.Errorf("%s: %s on %s: add its verb to verbs", s.where, rest[0].name, r.resource)
			}
			s.use(r, v)
		}
	}
	return true
}

// clientGoUses returns what the server's source asks of the API.
func clientGoUses(t *testing.T) []apiUse {
	t.Helper()
	uses := map[apiUse]bool{}
	for _, pattern := range clientGoSources {
		files, _ := filepath.Glob(filepath.Join(root, pattern))
		if len(files) == 0 {
			t.Fatalf("no %s", pattern)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			file, err := parser.ParseFile(token.NewFileSet(), f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, f)
			for _, d := range file.Decls {
				s := &scanner{t: t, where: rel, vars: map[string]resource{}, uses: uses}
				ast.Inspect(d, s.visit)
			}
		}
	}
	out := make([]apiUse, 0, len(uses))
	for u := range uses {
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func TestRBACCoversClientGoCalls(t *testing.T) {
	uses := clientGoUses(t)
	t.Logf("tunnel-server's API calls: %v", uses)
	for _, must := range []apiUse{{"", "nodes", "list"}, {"", "nodes", "watch"}, {"coordination.k8s.io", "leases", "create"}} {
		if !slices.Contains(uses, must) {
			t.Fatalf("found no %s in %v: the source scan has gone blind", must, clientGoSources)
		}
	}
	user := "system:tunnel-server"
	ns := leaseNamespace(t)
	allowed := grantedRules(t, user, ns)
	for _, u := range uses {
		isNS, known := namespaced[u.resource]
		if !known {
			t.Errorf("%s: add %s to namespaced", u, u.resource)
			continue
		}
		rules := allowed.cluster
		if isNS {
			rules = append(slices.Clone(rules), allowed.namespace...)
		}
		if !slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool { return ruleAllows(r, u) }) {
			where := "cluster-wide"
			if isNS {
				where = "in namespace " + ns
			}
			t.Errorf("tunnel-server calls %s, which no role bound to %s allows %s", u, user, where)
		}
	}
}

// leaseNamespace is the namespace of the replicas' Leases in the static
// pod: --lease-namespace, else the server's default.
func leaseNamespace(t *testing.T) string {
	for _, c := range containers(render(t, "kubernetes/control-plane")) {
		if ns, ok := flagValue(c.flagArgs(), "lease-namespace"); ok {
			return ns
		}
	}
	out, _ := run(t, binPath(serverName), "--help")
	m := regexp.MustCompile(`--lease-namespace string.*\(default "([^"]+)"\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s --help gives no default --lease-namespace", serverName)
	}
	return m[1]
}

// granted are the rules bound to a user, cluster-wide and in one namespace.
type granted struct{ cluster, namespace []rbacv1.PolicyRule }

// grantedRules collects, from the rendered base, the rules of the
// ClusterRoles bound to user and of the Roles bound to it in ns.
func grantedRules(t *testing.T, user, ns string) granted {
	ms := render(t, "kubernetes/base")
	clusterRoles, roles := map[string][]rbacv1.PolicyRule{}, map[string][]rbacv1.PolicyRule{}
	for _, m := range ms {
		switch r := m.obj.(type) {
		case *rbacv1.ClusterRole:
			clusterRoles[r.Name] = r.Rules
		case *rbacv1.Role:
			roles[r.Namespace+"/"+r.Name] = r.Rules
		}
	}
	var g granted
	for _, m := range ms {
		switch b := m.obj.(type) {
		case *rbacv1.ClusterRoleBinding:
			if bindsUser(b.Subjects, user) {
				g.cluster = append(g.cluster, clusterRoles[b.RoleRef.Name]...)
			}
		case *rbacv1.RoleBinding:
			if !bindsUser(b.Subjects, user) || b.Namespace != ns {
				continue
			}
			if b.RoleRef.Kind == "ClusterRole" {
				g.namespace = append(g.namespace, clusterRoles[b.RoleRef.Name]...)
			} else {
				g.namespace = append(g.namespace, roles[b.Namespace+"/"+b.RoleRef.Name]...)
			}
		}
	}
	return g
}

func bindsUser(subjects []rbacv1.Subject, user string) bool {
	return slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool { return s.Kind == rbacv1.UserKind && s.Name == user })
}

// ruleAllows is RBAC's match of one rule, without resource names (the
// server's Lease names vary, and list, watch and create take none).
func ruleAllows(r rbacv1.PolicyRule, u apiUse) bool {
	has := func(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }
	return len(r.ResourceNames) == 0 && has(r.APIGroups, u.group) && has(r.Resources, u.resource) && has(r.Verbs, u.verb)
}
