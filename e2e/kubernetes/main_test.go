//go:build linux

package kubernetes

import (
	"flag"
	"fmt"
	"os"
	"testing"
)

// bins holds every binary the tests run, found or built by TestMain.
var bins binaries

// skipReason, when set, makes every test skip: the machine cannot run them.
var skipReason string

// TestMain builds tunnel-server and tunnel-agent from the working tree and
// finds kube-apiserver, kubectl and etcd in the cache, building them the
// first time (see binaries_test.go).
func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if err := checkPrivileges(); err != nil {
		skipReason = err.Error()
		return m.Run()
	}
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	b, cleanup, err := buildAll(logf)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubernetes e2e: %v\n", err)
		return 1
	}
	defer cleanup()
	bins = b
	return m.Run()
}

// requireEnv skips t where the machine cannot run these tests.
func requireEnv(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
