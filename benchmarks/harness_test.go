package benchmarks

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/tunnel"
)

// The Go benchmarks and tests share one in-process tunnel: a server with
// its CONNECT frontend on a unix socket, one agent over loopback TLS 1.3 +
// yamux, and a Target. It starts on first use and stops in TestMain.

// benchNode is the agent's node; its certificate proves 127.0.0.1, so a
// CONNECT to the target's loopback address routes to it.
var benchNode = certs.Node{Name: "bench-node", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}

type inProcess struct {
	dir    string
	target *Target
	srv    *tunnel.Server
	tunnel ConnectDialer
	direct DirectDialer
	stops  []func()

	sshTunnel ConnectDialer // the tunnel path over the SSH transport (ssh_test.go)

	fallbackTunnel ConnectDialer // the SSH fallback through sshd (ssh_fallback_test.go)
	fallbackSkip   string        // why that path cannot run here, if it cannot
}

var (
	sharedOnce sync.Once
	shared     *inProcess
	sharedErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	os.Exit(code)
}

// env returns the shared in-process tunnel, starting it on first use.
func env(tb testing.TB) *inProcess {
	tb.Helper()
	sharedOnce.Do(func() { shared, sharedErr = startInProcess() })
	if sharedErr != nil {
		tb.Fatalf("starting the in-process tunnel: %v", sharedErr)
	}
	return shared
}

func startInProcess() (_ *inProcess, err error) {
	dir, err := os.MkdirTemp("", "tunnel-bench-")
	if err != nil {
		return nil, err
	}
	e := &inProcess{dir: dir}
	defer func() {
		if err != nil {
			e.stop()
		}
	}()
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(dir, "pki"), Nodes: []certs.Node{benchNode}})
	if err != nil {
		return nil, err
	}
	if err := e.startTarget(); err != nil {
		return nil, err
	}
	agentAddr, err := e.startServer(files)
	if err != nil {
		return nil, err
	}
	if err := e.startAgent(files, agentAddr); err != nil {
		return nil, err
	}
	if err := e.startSSH(files); err != nil {
		return nil, err
	}
	return e, e.startSSHFallback(files)
}

func (e *inProcess) stop() {
	for i := len(e.stops) - 1; i >= 0; i-- {
		e.stops[i]()
	}
	os.RemoveAll(e.dir)
}

// goServe runs serve in a goroutine; stop closes and waits for it.
func (e *inProcess) goServe(serve func() error, closeFn func() error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve()
	}()
	e.stops = append(e.stops, func() { closeFn(); <-done })
}

func (e *inProcess) startTarget() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e.target = NewTarget(ln)
	e.goServe(e.target.Serve, e.target.Close)
	e.direct = DirectDialer{Addr: ln.Addr().String()}
	return nil
}

// newServer creates a server with the generated certificates, closed when
// the harness stops; the caller starts its listeners.
func (e *inProcess) newServer(files certs.Files) (*tunnel.Server, error) {
	cfg, err := serverConfig(files)
	if err != nil {
		return nil, err
	}
	srv, err := tunnel.NewServer(cfg)
	if err != nil {
		return nil, err
	}
	e.stops = append(e.stops, func() { srv.Close() })
	return srv, nil
}

// serverConfig is the default server configuration with the generated
// server certificate and agent CA.
func serverConfig(files certs.Files) (tunnel.ServerConfig, error) {
	cfg := tunnel.DefaultServerConfig()
	cert, err := certs.LoadKeyPair(files.ServerCert, files.ServerKey)
	if err != nil {
		return cfg, err
	}
	pool, err := certs.LoadPool(files.CACert)
	if err != nil {
		return cfg, err
	}
	cfg.AgentTLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool}
	return cfg, nil
}

func (e *inProcess) startServer(files certs.Files) (string, error) {
	var err error
	if e.srv, err = e.newServer(files); err != nil {
		return "", err
	}
	agentLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	sock := filepath.Join(e.dir, "connect.sock")
	udsLn, err := tunnel.ListenUnix(sock, 0o600)
	if err != nil {
		agentLn.Close()
		return "", err
	}
	e.goServe(func() error { return e.srv.ServeAgents(agentLn) }, agentLn.Close)
	e.goServe(func() error { return e.srv.ServeConnect(udsLn) }, udsLn.Close)
	e.tunnel = ConnectDialer{Network: "unix", Addr: sock, Dest: e.direct.Addr}
	return agentLn.Addr().String(), nil
}

func (e *inProcess) startAgent(files certs.Files, serverAddr string) error {
	pair := files.Agents[benchNode.Name]
	cert, err := certs.LoadKeyPair(pair[0], pair[1])
	if err != nil {
		return err
	}
	pool, err := certs.LoadPool(files.CACert)
	if err != nil {
		return err
	}
	cfg := tunnel.DefaultAgentConfig()
	cfg.ServerAddress = serverAddr
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "localhost"}
	cfg.NodeName = benchNode.Name
	cfg.NodeIPs = benchNode.IPs
	return e.runAgent(cfg, e.srv)
}

// runAgent runs an agent of cfg until the harness stops, and waits until
// srv counts an agent.
func (e *inProcess) runAgent(cfg tunnel.AgentConfig, srv *tunnel.Server) error {
	a, err := tunnel.NewAgent(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.goServe(func() error { return a.Run(ctx) }, func() error { cancel(); return nil })
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	return srv.WaitAgents(wctx, 1)
}

// path is one way to the target; skip says why it cannot run here.
type path struct {
	name string
	d    Dialer
	skip string
}

// paths returns the ways to the target: the baseline, the tunnel over each
// agent transport, and the SSH fallback.
func (e *inProcess) paths() []path {
	return []path{{"direct", e.direct, ""}, {"tunnel", e.tunnel, ""}, {"tunnel-ssh", e.sshTunnel, ""},
		{"tunnel-ssh-fallback", e.fallbackTunnel, e.fallbackSkip}}
}

// skipIfCannot skips tb, with the reason, where p cannot run.
func (p path) skipIfCannot(tb testing.TB) {
	tb.Helper()
	if p.skip != "" {
		tb.Skip(p.skip)
	}
}

// sizeName spells a byte count the way the benchmark names use it.
func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// isMismatch reports whether err is a verification failure.
func isMismatch(err error) bool {
	var me *MismatchError
	return errors.As(err, &me)
}
