package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apiserver/pkg/server/egressselector"
)

// dialFunc is the dialer kube-apiserver gets from its egress selector
// (k8s.io/apimachinery/pkg/util/net.DialFunc).
type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// deployConfig returns the EgressSelectorConfiguration checked in under
// deploy/egress-selector/, with the production paths it names replaced by
// the test's (old, new pairs), so the files operators copy are the ones the
// real client loads here.
func deployConfig(t *testing.T, name string, oldnew ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "egress-selector", name))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(oldnew); i += 2 {
		if !strings.Contains(string(b), oldnew[i]) {
			t.Fatalf("%s no longer mentions %q", name, oldnew[i])
		}
	}
	return strings.NewReplacer(oldnew...).Replace(string(b))
}

// writeEgressConfig writes an EgressSelectorConfiguration file into a
// temporary directory removed in cleanup.
func writeEgressConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "egress-selector-configuration.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("egress selector configuration %s:\n%s", path, yaml)
	return path
}

// loadClusterDialer loads the file the way kube-apiserver's
// --egress-selector-config-file is applied (EgressSelectorOptions.ApplyTo:
// read, validate, build) and returns the dialer of the "cluster" network
// context, the one used for kubelets, node/pod/service proxy and webhooks.
func loadClusterDialer(t *testing.T, path string) dialFunc {
	t.Helper()
	config, err := egressselector.ReadEgressSelectorConfiguration(path)
	if err != nil {
		t.Fatalf("failed to read egress selector config: %v", err)
	}
	if errs := egressselector.ValidateEgressSelectorConfiguration(config); len(errs) > 0 {
		t.Fatalf("failed to validate egress selector configuration: %v", errs.ToAggregate())
	}
	selector, err := egressselector.NewEgressSelector(config)
	if err != nil {
		t.Fatalf("failed to setup egress selector: %v", err)
	}
	if selector == nil {
		t.Fatal("egress selector is nil: the configuration has no egressSelections")
	}
	dial, err := selector.Lookup(egressselector.Cluster.AsNetworkContext())
	if err != nil {
		t.Fatalf("lookup of the cluster egress: %v", err)
	}
	if dial == nil {
		t.Fatal("lookup of the cluster egress returned no dialer")
	}
	return dial
}

// errNoCONNECTResponse is the error of a dial whose CONNECT was not answered
// in time.
var errNoCONNECTResponse = errors.New("no CONNECT response")

// dialResult is the outcome of one egress dial.
type dialResult struct {
	conn net.Conn
	err  error
}

// dialBounded dials addr through the egress dialer and gives up after
// timeout. The egress selector itself waits for the CONNECT response with no
// time limit (it ignores the context once connected to the proxy), so a
// CONNECT left unanswered is reported here instead of hanging the test. A
// connection that arrives after the timeout is closed.
func dialBounded(dial dialFunc, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ch := make(chan dialResult, 1)
	go func() {
		c, err := dial(ctx, "tcp", addr)
		ch <- dialResult{c, err}
	}()
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-time.After(timeout):
		go func() {
			if r := <-ch; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, fmt.Errorf("dial %s: %w within %v", addr, errNoCONNECTResponse, timeout)
	}
}

// mustDial dials addr through the egress dialer, closing the connection in
// cleanup.
func mustDial(t *testing.T, dial dialFunc, addr string) net.Conn {
	t.Helper()
	c, err := dialBounded(dial, addr, dialTimeout)
	if err != nil {
		t.Fatalf("egress dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
