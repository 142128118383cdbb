// Command tunnel-server runs beside kube-apiserver: it accepts tunnel-agents'
// outbound sessions and serves the API server's egress selector (HTTP
// CONNECT over a unix socket or TCP with mutual TLS), sending each dial down
// the tunnel of the agent that can reach its destination. With
// --grpc-uds-path it also speaks kube-apiserver's gRPC egress protocol
// (Konnectivity's ProxyService) on a second unix socket.
//
// Commands: "tunnel-server certs" writes quick-start certificates,
// "tunnel-server demo" runs a whole tunnel on loopback and shows a request
// crossing it, and "help" and "version" do what they say.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
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

func main() { os.Exit(program().Run(os.Args[1:])) }

// program is tunnel-server with its commands.
func program() *cli.Program {
	return &cli.Program{
		Name: prog,
		Summary: "tunnel-server runs beside kube-apiserver: it accepts tunnel-agents' outbound sessions and serves\n" +
			"the API server's egress selector (HTTP CONNECT or gRPC), sending each dial down the tunnel of the\n" +
			"agent that can reach its destination.",
		Main: cli.Command{Setup: setupServer},
		Commands: []cli.Command{
			{Name: "certs", Summary: "write quick-start certificates (and, with --ssh, SSH keys) for a server, kube-apiserver and agents",
				Synopsis: "--out DIR [--node NAME[=IP,...]]...", Setup: setupCerts}, // certs.go
			{Name: "demo", Summary: "run a server, an agent and a target on loopback and show a request crossing the tunnel",
				Setup: setupDemo}, // demo.go
		},
		Version: func() string { return admin.Build().String() },
	}
}

// The server's flag groups, in the order --help lists them.
const (
	groupAgents   = "Agent listener"
	groupFrontend = "Frontend"
	groupRouting  = "Routing"
	groupHA       = "High availability"
	groupLimits   = "Limits"
)

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

// bind adds every flag, each to its group.
func (f *serverFlags) bind(g *cli.FlagGroups) {
	for _, name := range []string{groupAgents, groupFrontend, cli.GroupTLS, groupRouting, groupHA, cli.GroupSSH, groupLimits, cli.GroupObservability, cli.GroupGeneral} {
		g.Group(name) // the order of --help
	}
	g.Group(groupAgents).StringVar(&f.agentAddr, "agent-listen-address", ":8132", "host:port where agents connect (TLS 1.3, client certificates required)")
	f.bindFrontend(g.Group(groupFrontend))
	f.bindTLS(g.Group(cli.GroupTLS))
	g.Group(groupRouting).BoolVar(&f.cfg.TrustAgentRoutes, "trust-agent-routes", false, "accept node IPs, pod CIDRs and the default route as agents declare them, without proof from their certificates (weaker: a compromised node could attract other nodes' traffic)")
	f.bindHA(g.Group(groupHA))                           // ha.go
	f.kube.bind(g.Group(groupRouting), g.Group(groupHA)) // kube.go
	f.ssh.bind(g.Group(cli.GroupSSH))                    // ssh.go
	f.bindLimits(g.Group(groupLimits))                   // limits.go
	f.bindOps(g)                                         // ops.go
	f.log.Bind(g.Group(cli.GroupObservability))
	g.Group(cli.GroupGeneral).DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long open tunnels may go on while new CONNECTs get 503")
}

// bindFrontend adds the frontends' flags.
func (f *serverFlags) bindFrontend(fs *pflag.FlagSet) {
	fs.StringVar(&f.udsPath, "uds-path", "", "unix socket for the HTTP CONNECT frontend (empty disables)")
	f.bindUDS(fs) // limits.go
	fs.StringVar(&f.grpcUDSPath, "grpc-uds-path", "", "unix socket for the gRPC frontend, kube-apiserver's proxyProtocol: GRPC (empty disables)")
	fs.StringVar(&f.frontendAddr, "frontend-listen-address", "", "host:port for the HTTP CONNECT frontend over TCP with mutual TLS (empty disables)")
	fs.StringSliceVar(&f.frontendNames, "frontend-allowed-names", nil, "client certificate common names allowed on the TCP frontend (repeatable; default: any certificate from --frontend-ca-file that is not a node's)")
}

// bindTLS adds the certificate, key and CA flags.
func (f *serverFlags) bindTLS(fs *pflag.FlagSet) {
	fs.StringVar(&f.certFile, "tls-cert-file", "", "server certificate (PEM), used on the agent port and the TCP frontend")
	fs.StringVar(&f.keyFile, "tls-private-key-file", "", "private key of --tls-cert-file (PEM)")
	fs.StringVar(&f.agentCA, "agent-ca-file", "", "CA bundle that signs agent client certificates")
	fs.StringVar(&f.frontendCA, "frontend-ca-file", "", "CA bundle that signs frontend (kube-apiserver) client certificates, for --frontend-listen-address")
	f.reload.Bind(fs)
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
	"AgentAcceptBurst":     "agent-accept-burst",
	"MaxAgentHandshakes":   "max-agent-handshakes",
	"MaxFrontendConns":     "max-frontend-connections",
	"AdvertiseAddress":     "advertise-address",

	"KeepaliveInterval": "keepalive-interval",
	"KeepaliveTimeout":  "keepalive-timeout",
}

// setupServer binds the server's flags and returns what serves.
func setupServer(g *cli.FlagGroups, _ io.Writer) func() error {
	f := &serverFlags{cfg: tunnel.DefaultServerConfig()}
	f.bind(g)
	return func() error { return serve(f, g.Set()) }
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
	if err := f.checkUDS(log); err != nil { // limits.go
		return err
	}
	if f.drainTimeout < 0 {
		return &cli.FlagError{Flag: "drain-timeout", Msg: "must not be negative"}
	}
	if err := f.reload.Validate(); err != nil {
		return err
	}
	pair, err := cli.ReloadingKeyPair("tls-cert-file", "tls-private-key-file", f.certFile, f.keyFile)
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
	stopNodes, err := f.kube.start(fs, &f.cfg, log) // kube.go
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
		loops.Go(l.name, func() error { return l.serve(srv, l.ln) }, errc)
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
		return nil, nil, cli.Blame("agent-listen-address", err)
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
		out = append(out, listener{"uds", cli.PeerListener(ln), (*tunnel.Server).ServeConnect})
	}
	if f.grpcUDSPath != "" {
		ln, err := tunnel.ListenUnix(f.grpcUDSPath, 0o600)
		if err != nil {
			return out, nil, cli.Blame("grpc-uds-path", err)
		}
		out = append(out, listener{"grpc-uds", cli.PeerListener(ln), konnectivity.Serve})
	}
	if f.frontendAddr != "" {
		if cas, err = cli.ReloadingPool("frontend-ca-file", f.frontendCA); err != nil {
			return out, nil, err
		}
		ln, err := net.Listen("tcp", f.frontendAddr)
		if err != nil {
			return out, nil, cli.Blame("frontend-listen-address", err)
		}
		cfg := certs.ServerTLS(pair, cas)
		cfg.VerifyConnection = tunnel.FrontendClientPolicy(f.frontendNames)
		cfg.MinVersion = tls.VersionTLS12 // kube-apiserver's client may be configured for 1.2
		out = append(out, listener{"frontend", tls.NewListener(ln, cfg), (*tunnel.Server).ServeConnect})
	}
	return out, cas, nil
}
