// Command tunnel-server runs beside kube-apiserver: it accepts tunnel-agents'
// outbound sessions and serves the API server's egress selector (HTTP
// CONNECT over a unix socket or TCP with mutual TLS), sending each dial down
// the tunnel of the agent that can reach its destination.
//
// Subcommands: "tunnel-server certs" writes quick-start certificates, and
// "tunnel-server demo" runs a whole tunnel on loopback and shows a request
// crossing it.
package main

import (
	"crypto/tls"
	"net"
	"os"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
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
	certFile, keyFile                string
	agentCA, frontendCA              string
	frontendNames                    []string
	cfg                              tunnel.ServerConfig
	log                              cli.LogFlags
}

func (f *serverFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.agentAddr, "agent-listen-address", ":8132", "host:port where agents connect (TLS 1.3, client certificates required)")
	fs.StringVar(&f.certFile, "tls-cert-file", "", "server certificate (PEM), used on the agent port and the TCP frontend")
	fs.StringVar(&f.keyFile, "tls-private-key-file", "", "private key of --tls-cert-file (PEM)")
	fs.StringVar(&f.agentCA, "agent-ca-file", "", "CA bundle that signs agent client certificates")
	fs.StringVar(&f.udsPath, "uds-path", "", "unix socket for the HTTP CONNECT frontend (empty disables)")
	fs.StringVar(&f.frontendAddr, "frontend-listen-address", "", "host:port for the HTTP CONNECT frontend over TCP with mutual TLS (empty disables)")
	fs.StringVar(&f.frontendCA, "frontend-ca-file", "", "CA bundle that signs frontend (kube-apiserver) client certificates")
	fs.StringSliceVar(&f.frontendNames, "frontend-allowed-names", nil, "client certificate common names allowed on the TCP frontend (repeatable; default: any certificate from --frontend-ca-file that is not a node's)")
	fs.BoolVar(&f.cfg.TrustAgentRoutes, "trust-agent-routes", false, "accept node IPs, pod CIDRs and the default route as agents declare them, without proof from their certificates (weaker: a compromised node could attract other nodes' traffic)")
	fs.DurationVar(&f.cfg.DialTimeout, "dial-timeout", f.cfg.DialTimeout, "how long an agent may take to dial a destination")
	fs.DurationVar(&f.cfg.HandshakeTimeout, "handshake-timeout", f.cfg.HandshakeTimeout, "bound on an agent's TLS handshake and hello")
	fs.DurationVar(&f.cfg.HeaderTimeout, "connect-header-timeout", f.cfg.HeaderTimeout, "bound on reading a CONNECT request")
	fs.StringVar(&f.cfg.ID, "server-id", "", "ID of this server replica (default: random)")
	f.log.Bind(fs)
}

// configFlags names the flag bound to each ServerConfig field.
var configFlags = map[string]string{
	"AgentTLS":         "tls-cert-file",
	"DialTimeout":      "dial-timeout",
	"HandshakeTimeout": "handshake-timeout",
	"HeaderTimeout":    "connect-header-timeout",
}

func runServer(args []string) int {
	f := serverFlags{cfg: tunnel.DefaultServerConfig()}
	fs := pflag.NewFlagSet(prog, pflag.ContinueOnError)
	f.bind(fs)
	err := cli.Parse(fs, args)
	if err == nil {
		err = serve(&f, fs)
	}
	return cli.Exit(prog, fs, err)
}

func serve(f *serverFlags, fs *pflag.FlagSet) error {
	if err := cli.Required(fs, "tls-cert-file", "tls-private-key-file", "agent-ca-file"); err != nil {
		return err
	}
	if f.udsPath == "" && f.frontendAddr == "" {
		return &cli.FlagError{Flag: "uds-path", Msg: "one of --uds-path or --frontend-listen-address is required"}
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
	cert, err := cli.KeyPair("tls-cert-file", f.certFile, f.keyFile)
	if err != nil {
		return err
	}
	agentCAs, err := cli.Pool("agent-ca-file", f.agentCA)
	if err != nil {
		return err
	}
	f.cfg.AgentTLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: agentCAs}
	srv, err := tunnel.NewServer(f.cfg)
	if err != nil {
		return cli.FromConfig(err, configFlags)
	}
	defer srv.Close()
	listeners, err := f.listen(cert)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		log.Info("listening", "listener", l.name, "addr", l.ln.Addr().String())
		go func() { errc <- l.serve(srv, l.ln) }()
	}
	log.Info("tunnel-server started", "server_id", srv.ID())
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case err := <-errc:
		return err
	}
}

type listener struct {
	name  string
	ln    net.Listener
	serve func(*tunnel.Server, net.Listener) error
}

// listen opens the agent port and the frontends; on error it closes what
// it opened.
func (f *serverFlags) listen(cert tls.Certificate) (out []listener, err error) {
	defer func() {
		if err != nil {
			for _, l := range out {
				l.ln.Close()
			}
		}
	}()
	ln, err := net.Listen("tcp", f.agentAddr)
	if err != nil {
		return nil, &cli.FlagError{Flag: "agent-listen-address", Msg: err.Error()}
	}
	out = append(out, listener{"agent", ln, (*tunnel.Server).ServeAgents})
	if f.udsPath != "" {
		ln, err := tunnel.ListenUnix(f.udsPath, 0o600)
		if err != nil {
			return out, &cli.FlagError{Flag: "uds-path", Msg: err.Error()}
		}
		out = append(out, listener{"uds", ln, (*tunnel.Server).ServeConnect})
	}
	if f.frontendAddr != "" {
		cas, err := cli.Pool("frontend-ca-file", f.frontendCA)
		if err != nil {
			return out, err
		}
		ln, err := net.Listen("tcp", f.frontendAddr)
		if err != nil {
			return out, &cli.FlagError{Flag: "frontend-listen-address", Msg: err.Error()}
		}
		tlsLn := tls.NewListener(ln, &tls.Config{
			Certificates:     []tls.Certificate{cert},
			ClientCAs:        cas,
			ClientAuth:       tls.RequireAndVerifyClientCert,
			VerifyConnection: tunnel.FrontendClientPolicy(f.frontendNames),
			MinVersion:       tls.VersionTLS12,
		})
		out = append(out, listener{"frontend", tlsLn, (*tunnel.Server).ServeConnect})
	}
	return out, nil
}
