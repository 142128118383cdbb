// Command tunnel-server runs beside kube-apiserver: it accepts tunnel-agents'
// outbound sessions and serves the API server's egress selector (HTTP
// CONNECT over a unix socket or TCP with mutual TLS), sending each dial down
// the tunnel of the agent that can reach its destination. With
// --grpc-uds-path it also speaks kube-apiserver's gRPC egress protocol
// (Konnectivity's ProxyService) on a second unix socket.
//
// Subcommands: "tunnel-server certs" writes quick-start certificates, and
// "tunnel-server demo" runs a whole tunnel on loopback and shows a request
// crossing it.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/admin"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
	"github.com/tunnel-project/tunnel/tunnel/konnectivity"
)

const prog = "tunnel-server"

func main() {
	args := os.Args[1:]
	if len(args) > 0 {
		switch args[0] {
		case "certs":
			os.Exit(runCerts(args[1:]))
		case "demo":
			os.Exit(runDemo(args[1:]))
		}
	}
	os.Exit(runServer(args))
}

// serverFlags binds every flag of the server one-to-one to its setting.
type serverFlags struct {
	agentAddr, frontendAddr, udsPath string
	grpcUDSPath                      string
	certFile, keyFile                string
	agentCA, frontendCA              string
	frontendNames                    []string
	cfg                              tunnel.ServerConfig
	log                              cli.LogFlags
	reload                           cli.ReloadFlags
	drainTimeout                     time.Duration
	ops                              opsFlags  // ops.go
	uds                              udsFlags  // limits.go
	ssh                              sshFlags  // ssh.go
	kube                             kubeFlags // kube.go
	ha                               haFlags   // ha.go
}

func (f *serverFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.agentAddr, "agent-listen-address", ":8132", "host:port where agents connect (TLS 1.3, client certificates required)")
	fs.StringVar(&f.certFile, "tls-cert-file", "", "server certificate (PEM), used on the agent port and the TCP frontend")
	fs.StringVar(&f.keyFile, "tls-private-key-file", "", "private key of --tls-cert-file (PEM)")
	fs.StringVar(&f.agentCA, "agent-ca-file", "", "CA bundle that signs agent client certificates")
	fs.StringVar(&f.udsPath, "uds-path", "", "unix socket for the HTTP CONNECT frontend (empty disables)")
	fs.StringVar(&f.grpcUDSPath, "grpc-uds-path", "", "unix socket for the gRPC frontend, kube-apiserver's proxyProtocol: GRPC (empty disables)")
	fs.StringVar(&f.frontendAddr, "frontend-listen-address", "", "host:port for the HTTP CONNECT frontend over TCP with mutual TLS (empty disables)")
	fs.StringVar(&f.frontendCA, "frontend-ca-file", "", "CA bundle that signs frontend (kube-apiserver) client certificates")
	fs.StringSliceVar(&f.frontendNames, "frontend-allowed-names", nil, "client certificate common names allowed on the TCP frontend (repeatable; default: any certificate from --frontend-ca-file that is not a node's)")
	fs.BoolVar(&f.cfg.TrustAgentRoutes, "trust-agent-routes", false, "accept node IPs, pod CIDRs and the default route as agents declare them, without proof from their certificates (weaker: a compromised node could attract other nodes' traffic)")
	fs.DurationVar(&f.cfg.DialTimeout, "dial-timeout", f.cfg.DialTimeout, "how long an agent may take to dial a destination")
	fs.DurationVar(&f.cfg.HandshakeTimeout, "handshake-timeout", f.cfg.HandshakeTimeout, "bound on an agent's TLS handshake and hello")
	fs.DurationVar(&f.cfg.HeaderTimeout, "connect-header-timeout", f.cfg.HeaderTimeout, "bound on reading a CONNECT request")
	fs.StringVar(&f.cfg.ID, "server-id", "", "ID of this server replica (default: random)")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long open tunnels may go on while new CONNECTs get 503")
	f.bindLimits(fs) // limits.go
	f.ssh.bind(fs)   // ssh.go
	f.kube.bind(fs)  // kube.go
	f.bindHA(fs)     // ha.go
	f.reload.Bind(fs)
	f.log.Bind(fs)
	f.bindOps(fs)
}

// configFlags names the flag bound to each ServerConfig field.
var configFlags = map[string]string{
	"AgentTLS":         "tls-cert-file",
	"DialTimeout":      "dial-timeout",
	"HandshakeTimeout": "handshake-timeout",
	"HeaderTimeout":    "connect-header-timeout",

	"MaxHeaderBytes":       "max-connect-header-bytes",
	"MaxAgents":            "max-agents",
	"MaxStreamsPerAgent":   "max-streams-per-agent",
	"MaxPendingDials":      "max-pending-dials",
	"SessionWindowBudget":  "session-window-budget",
	"ReplacedDrainTimeout": "replaced-drain-timeout",
	"AgentAcceptRate":      "agent-accept-rate",
	"MaxAgentHandshakes":   "max-agent-handshakes",
	"MaxFrontendConns":     "max-frontend-connections",
	"AdvertiseAddress":     "advertise-address",

	"KeepaliveInterval": "keepalive-interval",
	"KeepaliveTimeout":  "keepalive-timeout",
}

func runServer(args []string) int {
	f := serverFlags{cfg: tunnel.DefaultServerConfig()}
	fs := pflag.NewFlagSet(prog, pflag.ContinueOnError)
	f.bind(fs)
	err := cli.Parse(fs, args)
	if err == nil && f.ops.admin.ShowVersion {
		admin.PrintVersion(prog)
		return 0
	}
	if err == nil {
		err = serve(&f, fs)
	}
	return cli.Exit(prog, fs, err)
}

func serve(f *serverFlags, fs *pflag.FlagSet) error {
	if err := cli.Required(fs, "tls-cert-file", "tls-private-key-file", "agent-ca-file"); err != nil {
		return err
	}
	if f.udsPath == "" && f.frontendAddr == "" && f.grpcUDSPath == "" {
		return &cli.FlagError{Flag: "uds-path", Msg: "one of --uds-path, --grpc-uds-path or --frontend-listen-address is required"}
	}
	if f.grpcUDSPath != "" && f.grpcUDSPath == f.udsPath {
		return &cli.FlagError{Flag: "grpc-uds-path", Msg: "must differ from --uds-path"}
	}
	if f.frontendAddr != "" {
		if err := cli.Required(fs, "frontend-ca-file"); err != nil {
			return err
		}
	}
	log, err := f.log.Logger()
	if err != nil {
		return err
	}
	f.cfg.Logger = log
	if f.drainTimeout < 0 {
		return &cli.FlagError{Flag: "drain-timeout", Msg: "must not be negative"}
	}
	if err := f.reload.Validate(); err != nil {
		return err
	}
	pair, err := cli.ReloadingKeyPair("tls-cert-file", f.certFile, f.keyFile)
	if err != nil {
		return err
	}
	agentCAs, err := cli.ReloadingPool("agent-ca-file", f.agentCA)
	if err != nil {
		return err
	}
	f.cfg.AgentTLS = certs.ServerTLS(pair, agentCAs)
	reloading := []cli.Reloader{pair, agentCAs}
	reg := admin.NewRegistry() // ops.go
	if err := f.checkOps(reg); err != nil {
		return err
	}
	if err := f.applyHA(); err != nil { // ha.go
		return err
	}
	stopNodes, err := f.kube.start(&f.cfg, log) // kube.go
	if err != nil {
		return err
	}
	defer stopNodes()
	srv, err := tunnel.NewServer(f.cfg)
	if err != nil {
		return cli.FromConfig(err, configFlags)
	}
	defer srv.Close()
	if err := f.ssh.enableFallback(srv, log); err != nil { // ssh.go
		return err
	}
	listeners, frontendCAs, err := f.listen(pair)
	if err != nil {
		return err
	}
	if frontendCAs != nil {
		reloading = append(reloading, frontendCAs)
	}
	loops, adm, err := f.startAdmin(reg, srv, listeners, log) // ops.go
	if err != nil {
		return err
	}
	defer adm.Close()
	ctx, stop := cli.SignalContext()
	defer stop()
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		log.Info("listening", "listener", l.name, "addr", l.ln.Addr().String())
		go func() { errc <- loops.Run(l.name, func() error { return l.serve(srv, l.ln) }) }()
	}
	log.Info("tunnel-server started", "server_id", srv.ID())
	cli.NotifyLogged(log, "READY=1") // sd_notify: every listener is up
	cli.WatchCerts(ctx, log, f.reload.Interval, admin.NewCertExpiry(reg).Track(reloading...)...)
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	cli.NotifyLogged(log, "STOPPING=1") // sd_notify
	log.Info("draining: new CONNECTs get 503", "tunnels", srv.Tunnels(), "timeout", f.drainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), f.drainTimeout)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("drain timeout passed; closed the tunnels still open", "err", err)
	}
	log.Info("tunnel-server stopped")
	return nil
}

type listener struct {
	name  string
	ln    net.Listener
	serve func(*tunnel.Server, net.Listener) error
}

// listen opens the agent port and the frontends, and returns the TCP
// frontend's reloading CA bundle if it has one; on error it closes what it
// opened.
func (f *serverFlags) listen(pair *certs.Reloading[tls.Certificate]) (out []listener, cas *certs.Reloading[*x509.CertPool], err error) {
	defer func() {
		if err != nil {
			for _, l := range out {
				l.ln.Close()
			}
		}
	}()
	ln, err := net.Listen("tcp", f.agentAddr)
	if err != nil {
		return nil, nil, &cli.FlagError{Flag: "agent-listen-address", Msg: err.Error()}
	}
	out = append(out, listener{"agent", ln, (*tunnel.Server).ServeAgents})
	if l, err := f.ssh.listen(); err != nil { // ssh.go
		return out, nil, err
	} else if l != nil {
		out = append(out, *l)
	}
	if f.udsPath != "" {
		ln, err := f.listenUDS() // limits.go
		if err != nil {
			return out, nil, err
		}
		out = append(out, listener{"uds", ln, (*tunnel.Server).ServeConnect})
	}
	if f.grpcUDSPath != "" {
		ln, err := tunnel.ListenUnix(f.grpcUDSPath, 0o600)
		if err != nil {
			return out, nil, &cli.FlagError{Flag: "grpc-uds-path", Msg: err.Error()}
		}
		out = append(out, listener{"grpc-uds", ln, konnectivity.Serve})
	}
	if f.frontendAddr != "" {
		if cas, err = cli.ReloadingPool("frontend-ca-file", f.frontendCA); err != nil {
			return out, nil, err
		}
		ln, err := net.Listen("tcp", f.frontendAddr)
		if err != nil {
			return out, nil, &cli.FlagError{Flag: "frontend-listen-address", Msg: err.Error()}
		}
		cfg := certs.ServerTLS(pair, cas)
		cfg.VerifyConnection = tunnel.FrontendClientPolicy(f.frontendNames)
		cfg.MinVersion = tls.VersionTLS12 // kube-apiserver's client may be configured for 1.2
		out = append(out, listener{"frontend", tls.NewListener(ln, cfg), (*tunnel.Server).ServeConnect})
	}
	return out, cas, nil
}
