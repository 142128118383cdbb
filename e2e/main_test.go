package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tunnel-project/tunnel/e2e/internal/bins"
)

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
	dir, err := bins.Build("..")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	serverBin = filepath.Join(dir, "tunnel-server")
	agentBin = filepath.Join(dir, "tunnel-agent")
	return m.Run()
}
