package main

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/admin"
	"github.com/tunnel-project/tunnel/cmd/internal/admin/admintest"
	"github.com/tunnel-project/tunnel/tunnel"
)

// TestReadyzUntilRegistered: an agent that cannot reach its server is live
// (its loop runs) but not ready; after Run returns it is not live either.
// Ready after registration is checked against real processes in
// e2e/process (TestMetricsAfterTraffic).
func TestReadyzUntilRegistered(t *testing.T) {
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(t.TempDir(), "pki"), Nodes: []certs.Node{{Name: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := certs.LoadPool(files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certs.LoadKeyPair(files.Agents["node-a"][0], files.Agents["node-a"][1])
	if err != nil {
		t.Fatal(err)
	}
	cfg := tunnel.DefaultAgentConfig()
	cfg.ServerAddress = "127.0.0.1:1" // nothing listens: the agent keeps retrying
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}
	cfg.NodeName = "node-a"
	agent, err := tunnel.NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	loops := admin.NewLoops(runLoop)
	h := admin.NewHandler(admin.NewRegistry(), agentHealth(agent, loops), false)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); loops.Run(runLoop, func() error { return agent.Run(ctx) }) }()
	deadline := time.Now().Add(5 * time.Second)
	for loops.Check() != nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/livez", 200, "ok"},
		{"/readyz", 503, "[-]registered failed: no registered session with the server\nreadyz check failed\n"},
		{"/readyz?verbose", 503, "[-]registered failed: no registered session with the server\nreadyz check failed\n"},
	} {
		if c, b := admintest.Get(t, h, tc.path); c != tc.code || b != tc.body {
			t.Errorf("GET %s: %d %q, want %d %q", tc.path, c, b, tc.code, tc.body)
		}
	}
	cancel()
	<-done
	if c, b := admintest.Get(t, h, "/livez?verbose"); c != 503 || b != "[+]ping ok\n[-]running failed: not running: run\nlivez check failed\n" {
		t.Errorf("GET /livez?verbose after Run returned: %d %q", c, b)
	}
}
