// Package bins builds the binaries under test, tunnel-server and
// tunnel-agent, from the main module for the e2e packages' TestMain.
package bins

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// buildTimeout bounds the one-time go build.
const buildTimeout = 5 * time.Minute

// Build runs go build for both binaries in root, the main module's
// directory, into a new temporary directory, and returns that directory;
// the caller removes it. A failed build's output is in the error.
func Build(root string) (string, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.Contains(mod, []byte("module github.com/tunnel-project/tunnel\n")) {
		return "", fmt.Errorf("%s is not the tunnel module root (go.mod: %v)", root, err)
	}
	dir, err := os.MkdirTemp("", "tunnel-e2e-bin-")
	if err != nil {
		return "", fmt.Errorf("temp dir: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/tunnel-server", "./cmd/tunnel-agent")
	cmd.Dir = root
	cmd.WaitDelay = 10 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("go build in %s failed: %v\n%s", root, err, out)
	}
	return dir, nil
}
