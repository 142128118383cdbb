package benchmarks

import (
	"context"
	"flag"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/tunnel"
)

// fleetAgents sizes TestRunFleet; raise it to measure a larger fleet
// against the in-process server:
//
//	go test -run 'TestRunFleet$' -v ./benchmarks/ -args -fleet.agents=5000
var fleetAgents = flag.Int("fleet.agents", 200, "agents TestRunFleet registers")

// fleetServer is a tunnel.Server of a test's own on loopback, with the
// certificates certs.Generate wrote for it.
type fleetServer struct {
	srv   *tunnel.Server
	addr  string
	files certs.Files
}

// startFleetServer starts a server that trusts a fresh CA for agents and
// stops it when the test ends.
func startFleetServer(t *testing.T) fleetServer {
	t.Helper()
	files := generateFleetPKI(t)
	cfg, err := serverConfig(files)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := tunnel.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeAgents(ln)
	}()
	t.Cleanup(func() { srv.Close(); <-done })
	return fleetServer{srv: srv, addr: ln.Addr().String(), files: files}
}

func generateFleetPKI(t *testing.T) certs.Files {
	t.Helper()
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(t.TempDir(), "pki")})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// options returns FleetOptions for n agents signed by the server's own CA.
func (s fleetServer) options(n int) FleetOptions {
	return FleetOptions{
		Server: s.addr, ServerName: "localhost", CAFile: s.files.CACert,
		SignerCert: s.files.CACert, SignerKey: s.files.CAKey,
		Agents: n, Timeout: 2 * time.Minute,
	}
}

func TestRunFleet(t *testing.T) {
	s := startFleetServer(t)
	n := *fleetAgents
	o := s.options(n)
	rss := []float64{1000, 1000 + 10*float64(n), 1000 + 10*float64(n)}
	o.ServerRSS = func() (float64, error) {
		v := rss[0]
		if len(rss) > 1 {
			rss = rss[1:]
		}
		return v, nil
	}
	var serverErr error
	calls := 0
	o.Progress = func(registered, total int) {
		calls++
		if registered == total {
			// The server counts an agent just after it acknowledges it.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			serverErr = s.srv.WaitAgents(ctx, total)
		}
	}
	res, err := RunFleet(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d agents: total %s, p50 %s, p99 %s, %d failed sessions", res.Agents, res.Total, res.P50, res.P99, res.FailedSessions)
	if serverErr != nil {
		t.Errorf("the server does not count every agent: %v", serverErr)
	}
	switch {
	case res.Agents != n:
		t.Errorf("Agents = %d, want %d", res.Agents, n)
	case res.Total <= 0 || res.P50 <= 0:
		t.Errorf("Total %s, P50 %s; want both positive", res.Total, res.P50)
	case res.P50 > res.P99 || res.P99 > res.Total:
		t.Errorf("P50 %s, P99 %s, Total %s; want P50 ≤ P99 ≤ Total", res.P50, res.P99, res.Total)
	case calls == 0:
		t.Error("Progress was never called")
	}
	if res.ServerRSSBeforeKiB != 1000 || res.ServerKiBPerAgent != 10 {
		t.Errorf("server memory %v KiB before, %v KiB per agent; want 1000 and 10", res.ServerRSSBeforeKiB, res.ServerKiBPerAgent)
	}
	waitNoAgents(t, s.srv)
}

// waitNoAgents fails unless every agent has left the server soon: RunFleet
// stops its fleet before it returns.
func waitNoAgents(t *testing.T, srv *tunnel.Server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Agents() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d agents still registered after RunFleet returned", srv.Agents())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunFleetUntrustedSigner runs a fleet signed by a CA the server does
// not trust: it must fail at the timeout, saying why, rather than hang.
func TestRunFleetUntrustedSigner(t *testing.T) {
	s := startFleetServer(t)
	other := generateFleetPKI(t)
	o := s.options(20)
	o.SignerCert, o.SignerKey = other.CACert, other.CAKey
	o.Timeout = 2 * time.Second
	start := time.Now()
	_, err := RunFleet(context.Background(), o)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("a fleet the server does not trust registered")
	}
	t.Log(err)
	for _, want := range []string{"0 of 20 agents registered within 2s", "agent fleet-", "unknown certificate authority"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if elapsed > o.Timeout+5*time.Second {
		t.Errorf("RunFleet took %s with a timeout of %s", elapsed, o.Timeout)
	}
}

func TestRunFleetOptions(t *testing.T) {
	s := startFleetServer(t)
	tests := []struct {
		name   string
		modify func(*FleetOptions)
		want   string
	}{
		{"no agents", func(o *FleetOptions) { o.Agents = 0 }, "want at least 1"},
		{"bad address", func(o *FleetOptions) { o.Server = "localhost" }, "not host:port"},
		{"negative timeout", func(o *FleetOptions) { o.Timeout = -time.Second }, "negative timeout"},
		{"missing CA", func(o *FleetOptions) { o.CAFile = "" }, "no CA bundle file"},
		{"signer not a CA", func(o *FleetOptions) { o.SignerCert, o.SignerKey = s.files.ServerCert, s.files.ServerKey }, "not a CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := s.options(1)
			tt.modify(&o)
			_, err := RunFleet(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "benchmarks: fleet: ") {
				t.Errorf("err = %v, want one starting \"benchmarks: fleet: \" that says %q", err, tt.want)
			}
		})
	}
}
