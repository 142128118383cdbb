// Package deploy checks the files in deploy/ as code: the Kubernetes
// manifests, rendered from their kustomize overlays, decode strictly into
// the API types and agree with each other and with the egress selector file
// of their mode; the EgressSelectorConfiguration files decode strictly the
// way kube-apiserver reads them; every flag the manifests, systemd units and
// environment files pass to tunnel-server and tunnel-agent exists in the
// binaries built from this tree (and parses); the systemd units pass
// `systemd-analyze verify` with their hardening in place; the RBAC covers
// the server's client-go calls and the kubeconfig script writes a
// kubeconfig for its user; promtool checks and unit-tests the alert rules.
//
// It also checks what is shipped: `make image` twice (one digest), the image
// unpacked by umoci and its binaries run; `make release` twice (one
// SHA256SUMS) and its archive unpacked and run.
//
// The Grafana dashboard is checked in ../process (dashboard_test.go),
// against the metrics real processes export after real traffic.
package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/e2e/internal/bins"
)

// Bounds on every wait in this package.
const (
	commandTimeout = 30 * time.Second
)

// Our binaries, by the name their command lines start with.
const (
	serverName = "tunnel-server"
	agentName  = "tunnel-agent"
)

var (
	// root is the main module's root, two levels up; deployDir its deploy/.
	root, deployDir string
	// binDir holds tunnel-server and tunnel-agent, built once by TestMain.
	binDir string
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	if state := os.Getenv(fakeKubectlEnv); state != "" { // kubeconfig_test.go
		return fakeKubectl(state, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	}
	var err error
	if root, err = filepath.Abs(filepath.Join("..", "..")); err != nil {
		fmt.Fprintf(os.Stderr, "deploy: %v\n", err)
		return 1
	}
	deployDir = filepath.Join(root, "deploy")
	dir, err := bins.Build(root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "deploy: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

func binPath(name string) string { return filepath.Join(binDir, name) }

// run runs argv within commandTimeout and returns its combined output and
// exit code; it fails the test only if argv cannot run at all or overruns.
func run(t *testing.T, argv ...string) (string, int) {
	t.Helper()
	return runIn(t, "", argv...)
}

// runIn is run in directory dir.
func runIn(t *testing.T, dir string, argv ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%q did not finish within %s; output:\n%s", argv, commandTimeout, out)
	}
	if exit, ok := err.(*exec.ExitError); ok {
		return string(out), exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("%q: %v", argv, err)
	}
	return string(out), 0
}

// deployFiles returns the files under deploy/sub whose names end in ext,
// as paths relative to deploy/; it fails if there are none.
func deployFiles(t *testing.T, sub, ext string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(deployDir, sub, "*"+ext))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatalf("no deploy/%s/*%s files", sub, ext)
	}
	for i, p := range paths {
		paths[i], _ = filepath.Rel(deployDir, p)
	}
	return paths
}

// readDeploy reads a file given relative to deploy/.
func readDeploy(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
