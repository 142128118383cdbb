package main

import (
	"os/exec"
	"strings"
	"testing"
)

// heavyDeps are what the node agent must not link (DESIGN.md section 7):
// gRPC and client-go belong to the server's integrations, packages
// tunnel/konnectivity and tunnel/kube, which import tunnel, never the
// reverse. Each is a package path and everything under it.
var heavyDeps = []string{
	"google.golang.org/grpc",
	"k8s.io/client-go",
	"github.com/tunnel-project/tunnel/tunnel/konnectivity",
	"github.com/tunnel-project/tunnel/tunnel/kube",
}

// TestAgentLinksNoGRPCOrClientGo fails if tunnel-agent's dependencies, as
// `go list -deps` reports them, include a heavy one.
func TestAgentLinksNoGRPCOrClientGo(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output() // go test puts its go first in PATH
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	linked := map[string][]string{} // heavy dependency → its packages linked
	for _, pkg := range strings.Fields(string(out)) {
		for _, heavy := range heavyDeps {
			if pkg == heavy || strings.HasPrefix(pkg, heavy+"/") {
				linked[heavy] = append(linked[heavy], pkg)
			}
		}
	}
	for heavy, pkgs := range linked {
		t.Errorf("tunnel-agent links %d packages of %s (%s, ...): import it only from the server", len(pkgs), heavy, pkgs[0])
	}
}
