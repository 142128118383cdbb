package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

// setupDemo binds the flags of "tunnel-server demo": throwaway
// certificates, a server, an agent and a sample target on loopback, a
// request through the tunnel, and a report of what happened. Everything is
// real: TCP, TLS 1.3, yamux and a unix-socket CONNECT frontend, in one
// process.
func setupDemo(g *cli.FlagGroups, stdout io.Writer) func() error {
	var logs cli.LogFlags
	logs.Bind(g.Group(cli.GroupObservability))
	return func() error { return demo(stdout, &logs) }
}

func demo(stdout io.Writer, logs *cli.LogFlags) error {
	step := func(format string, args ...any) { fmt.Fprintf(stdout, format+"\n", args...) }
	log, err := logs.Logger()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tunnel-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step("1. certificates: a throwaway CA, a server and an agent for node demo-node (IP 127.0.0.1) in %s", dir)
	files, err := certs.Generate(certs.Options{Dir: filepath.Join(dir, "pki"),
		Nodes: []certs.Node{{Name: "demo-node", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}}})
	if err != nil {
		return err
	}
	target, err := startTarget()
	if err != nil {
		return err
	}
	defer target.Close()
	step("2. sample target on the node: an HTTP server at %s", target.Addr())

	keys, err := demoTLS(files)
	if err != nil {
		return err
	}
	srv, agentAddr, sock, err := startDemoServer(keys.server, dir, log)
	if err != nil {
		return err
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	defer func() { cancel(); <-agentDone }()
	agent, err := tunnel.NewAgent(demoAgentConfig(keys.agent, agentAddr, log))
	if err != nil {
		return err
	}
	go func() { agentDone <- agent.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := srv.WaitAgents(wctx, 1); err != nil {
		return err
	}
	step("3. tunnel-agent dialed out to %s, proved node demo-node with its certificate, and registered", agentAddr)

	step("4. kube-apiserver's egress selector would now send, on %s:", sock)
	if err := demoRequest(step, sock, target.Addr().String()); err != nil {
		return err
	}
	step("5. a destination no agent serves gets an honest failure:")
	if err := demoRequest(step, sock, "127.0.0.9:10250"); err != nil {
		return err
	}
	step("6. quick figures through this tunnel (loopback, one process; benchmarks/ measures properly):")
	return demoFigures(step, sock)
}

// stepper prints one line of the demo's report.
type stepper func(format string, args ...any)

type demoConfigs struct{ server, agent *tls.Config }

func demoTLS(files certs.Files) (demoConfigs, error) {
	pool, err := certs.LoadPool(files.CACert)
	if err != nil {
		return demoConfigs{}, err
	}
	sc, err := certs.LoadKeyPair(files.ServerCert, files.ServerKey)
	if err != nil {
		return demoConfigs{}, err
	}
	f := files.Agents["demo-node"]
	ac, err := certs.LoadKeyPair(f[0], f[1])
	if err != nil {
		return demoConfigs{}, err
	}
	return demoConfigs{
		server: &tls.Config{Certificates: []tls.Certificate{sc}, ClientCAs: pool},
		agent:  &tls.Config{Certificates: []tls.Certificate{ac}, RootCAs: pool, ServerName: "localhost"},
	}, nil
}

func startDemoServer(t *tls.Config, dir string, log *slog.Logger) (*tunnel.Server, string, string, error) {
	cfg := tunnel.DefaultServerConfig()
	cfg.AgentTLS = t
	cfg.Logger = log
	srv, err := tunnel.NewServer(cfg)
	if err != nil {
		return nil, "", "", err
	}
	agentLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", "", err
	}
	sock := filepath.Join(dir, "tunnel.sock")
	udsLn, err := tunnel.ListenUnix(sock, 0o600)
	if err != nil {
		agentLn.Close()
		return nil, "", "", err
	}
	go srv.ServeAgents(agentLn)
	go srv.ServeConnect(cli.PeerListener(udsLn))
	return srv, agentLn.Addr().String(), sock, nil
}

func demoAgentConfig(t *tls.Config, serverAddr string, log *slog.Logger) tunnel.AgentConfig {
	cfg := tunnel.DefaultAgentConfig()
	cfg.ServerAddress = serverAddr
	cfg.TLS = t
	cfg.NodeName = "demo-node"
	cfg.NodeIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	cfg.Logger = log
	return cfg
}

// startTarget serves a tiny HTTP page and a /bulk stream for the figures.
func startTarget() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from demo-node: you asked for %s %s\n", r.Method, r.URL.Path)
	})
	go (&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}).Serve(ln)
	return ln, nil
}

// connect sends the egress selector's exact CONNECT bytes over the unix
// socket and returns the connection and the status line.
func connect(sock, dest string) (net.Conn, *bufio.Reader, string, error) {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, nil, "", err
	}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", dest)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, nil, "", err
	}
	return c, br, res.Proto + " " + res.Status, nil
}

func demoRequest(step stepper, sock, dest string) error {
	step("     > CONNECT %s HTTP/1.1", dest)
	c, br, status, err := connect(sock, dest)
	if err != nil {
		return err
	}
	defer c.Close()
	step("     < %s", status)
	if !strings.Contains(status, " 200 ") {
		return nil
	}
	fmt.Fprintf(c, "GET /hello HTTP/1.1\r\nHost: demo-node\r\nConnection: close\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	step("     then, through the tunnel: GET /hello -> %s: %s", res.Status, strings.TrimSpace(string(body)))
	return nil
}

// startWorkTarget serves the figures: a connection that starts with 'e'
// is echoed; one that starts with 's' is read to EOF and answered with the
// SHA-256 of what arrived, which also proves half-close crossed the tunnel.
func startWorkTarget() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveWork(c)
		}
	}()
	return ln, nil
}

func serveWork(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	if mode[0] == 'e' {
		io.Copy(c, c)
		return
	}
	h := sha256.New()
	io.Copy(h, c)
	c.Write(h.Sum(nil))
}

func demoFigures(step stepper, sock string) error {
	work, err := startWorkTarget()
	if err != nil {
		return err
	}
	defer work.Close()
	dest := work.Addr().String()
	const size = 256 << 20
	start := time.Now()
	if err := sendChecked(sock, dest, size); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	step("     one tunnel carried %d MiB, SHA-256 verified on the node: %.0f MB/s", size>>20, size/secs/1e6)
	n, took, err := echoTunnels(sock, dest, 8, 2*time.Second)
	if err != nil {
		return err
	}
	step("     8 clients opened %d tunnels (CONNECT, 64 B echo, close) in %s: %.0f tunnels/s", n, took.Round(time.Millisecond), float64(n)/took.Seconds())
	return nil
}

// sendChecked sends size random bytes through a tunnel, half-closes, and
// compares the target's digest with its own.
func sendChecked(sock, dest string, size int64) error {
	c, _, status, err := connect(sock, dest)
	if err != nil {
		return err
	}
	defer c.Close()
	if !strings.Contains(status, " 200 ") {
		return fmt.Errorf("CONNECT %s: %s", dest, status)
	}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	h := sha256.New()
	if _, err := c.Write([]byte{'s'}); err != nil {
		return err
	}
	if _, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.Reader, size)); err != nil {
		return err
	}
	c.(*net.UnixConn).CloseWrite()
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading digest: %w", err)
	}
	if string(got) != string(h.Sum(nil)) {
		return errors.New("digest mismatch: bytes were lost or corrupted")
	}
	return nil
}

// echoTunnels opens tunnels from workers clients for about d, each doing
// one verified 64-byte echo, and returns how many it completed.
func echoTunnels(sock, dest string, workers int, d time.Duration) (int, time.Duration, error) {
	start := time.Now()
	type result struct {
		n   int
		err error
	}
	results := make(chan result, workers)
	for range workers {
		go func() {
			n := 0
			for time.Since(start) < d {
				if err := echoOnce(sock, dest); err != nil {
					results <- result{n, err}
					return
				}
				n++
			}
			results <- result{n, nil}
		}()
	}
	total := 0
	var firstErr error
	for range workers {
		r := <-results
		total += r.n
		if firstErr == nil {
			firstErr = r.err
		}
	}
	return total, time.Since(start), firstErr
}

func echoOnce(sock, dest string) error {
	c, br, status, err := connect(sock, dest)
	if err != nil {
		return err
	}
	defer c.Close()
	if !strings.Contains(status, " 200 ") {
		return fmt.Errorf("CONNECT %s: %s", dest, status)
	}
	msg := make([]byte, 65)
	msg[0] = 'e'
	rand.Read(msg[1:])
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, 64)
	if _, err := io.ReadFull(br, got); err != nil {
		return err
	}
	if string(got) != string(msg[1:]) {
		return errors.New("echo mismatch")
	}
	return nil
}
