package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// buildTimeout bounds the one-time build of the binaries under test.
const buildTimeout = 5 * time.Minute

// Paths of the binaries under test, set by TestMain.
var (
	serverBin string
	agentBin  string
)

// TestMain builds tunnel-server and tunnel-agent once from the parent module
// into a temporary directory shared by every test in the package.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tunnel-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	serverBin = filepath.Join(dir, "tunnel-server")
	agentBin = filepath.Join(dir, "tunnel-agent")
	return m.Run()
}

// buildBinaries runs `go build` in the main module and returns its output in
// the error when it fails.
func buildBinaries(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/tunnel-server", "./cmd/tunnel-agent")
	cmd.Dir = ".."
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("building the binaries (go build in ..) failed: %v\n%s", err, out)
	}
	return nil
}
