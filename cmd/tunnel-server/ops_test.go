package main

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/admin"
	"github.com/tunnel-project/tunnel/cmd/internal/admin/admintest"
	"github.com/tunnel-project/tunnel/tunnel"
)

// TestReadyz: with --ready-min-agents=1 the server is not ready before its
// listener runs or while no agent is registered, and is ready once one
// registers; ?verbose lists every check.
func TestReadyz(t *testing.T) {
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(t.TempDir(), "pki"), Nodes: []certs.Node{{Name: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := certs.LoadPool(files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certs.LoadKeyPair(files.ServerCert, files.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tunnel.DefaultServerConfig()
	cfg.AgentTLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool}
	srv, err := tunnel.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	loops := admin.NewLoops("agent")
	h := admin.NewHandler(admin.NewRegistry(), serverHealth(srv, loops, opsFlags{readyMinAgents: 1}), false)

	expect := func(path string, code int, body string) {
		t.Helper()
		if c, b := admintest.Get(t, h, path); c != code || b != body {
			t.Errorf("GET %s: %d %q, want %d %q", path, c, b, code, body)
		}
	}
	expect("/readyz?verbose", 503, "[-]listeners failed: not running: agent\n[-]agents failed: 0 of at least 1 agents registered\n[+]not-draining ok\nreadyz check failed\n")
	expect("/livez", 503, "[-]listeners failed: not running: agent\nlivez check failed\n")

	served := make(chan error, 1)
	go func() { served <- loops.Run("agent", func() error { return srv.ServeAgents(ln) }) }()
	deadline := time.Now().Add(5 * time.Second)
	for loops.Check() != nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	expect("/readyz", 503, "[-]agents failed: 0 of at least 1 agents registered\nreadyz check failed\n")
	expect("/livez", 200, "ok")

	acfg := tunnel.DefaultAgentConfig()
	acfg.ServerAddress = ln.Addr().String()
	acert, err := certs.LoadKeyPair(files.Agents["node-a"][0], files.Agents["node-a"][1])
	if err != nil {
		t.Fatal(err)
	}
	acfg.TLS = &tls.Config{Certificates: []tls.Certificate{acert}, RootCAs: pool, ServerName: "localhost"}
	acfg.NodeName = "node-a"
	agent, err := tunnel.NewAgent(acfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); agent.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := srv.WaitAgents(wctx, 1); err != nil {
		t.Fatal(err)
	}
	expect("/readyz", 200, "ok")
	expect("/readyz?verbose", 200, "[+]listeners ok\n[+]agents ok\n[+]not-draining ok\nreadyz check passed\n")

	// --ready-min-agents=2 is not met by one agent; 0 needs none. Without a
	// node source no coverage can be met.
	for _, tc := range []struct {
		ops  opsFlags
		code int
		body string
	}{
		{opsFlags{readyMinAgents: 2}, 503, "[-]agents failed: 1 of at least 2 agents registered\nreadyz check failed\n"},
		{opsFlags{readyMinAgents: 0}, 200, "ok"},
		{opsFlags{readyMinAgents: 1, readyMinCoverage: 0.5}, 503, "[-]agents failed: 1 of 0 known nodes have an agent here, want 50% (--ready-min-coverage)\nreadyz check failed\n"},
	} {
		h := admin.NewHandler(admin.NewRegistry(), serverHealth(srv, loops, tc.ops), false)
		if c, b := admintest.Get(t, h, "/readyz"); c != tc.code || b != tc.body {
			t.Errorf("%+v with 1 agent: %d %q, want %d %q", tc.ops, c, b, tc.code, tc.body)
		}
	}

	cancel()
	<-ran
	srv.Close()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	expect("/livez", 503, "[-]listeners failed: not running: agent\nlivez check failed\n")
}
