// Command tunnel-agent runs on every node. It dials out to tunnel-server,
// proves its node identity with a client certificate, keeps one multiplexed
// TLS connection open, and dials destinations on the node's network for the
// control plane.
package main

import (
	"fmt"
	"net"
	"os"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/admin"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

const prog = "tunnel-agent"

func main() { os.Exit(run(os.Args[1:])) }

// agentFlags binds every flag of the agent one-to-one to its setting.
type agentFlags struct {
	caFile, certFile, keyFile, serverName string
	nodeIPs, podCIDRs                     []string
	allowCIDRs, allowPorts                []string
	cfg                                   tunnel.AgentConfig
	log                                   cli.LogFlags
	reload                                cli.ReloadFlags
	admin                                 admin.Flags // ops.go
	ssh                                   sshFlags    // ssh.go
}

func (f *agentFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.cfg.ServerAddress, "server-address", "", "host:port of tunnel-server's agent port")
	fs.StringVar(&f.caFile, "ca-file", "", "CA bundle that verifies the server's certificate")
	fs.StringVar(&f.certFile, "tls-cert-file", "", "agent client certificate (PEM): CN=system:node:NODE_NAME or a DNS SAN NODE_NAME")
	fs.StringVar(&f.keyFile, "tls-private-key-file", "", "private key of --tls-cert-file (PEM)")
	fs.StringVar(&f.serverName, "server-name", "", "name to verify in the server's certificate (default: the host of --server-address)")
	fs.StringVar(&f.cfg.NodeName, "node-name", "", "this node's name; the certificate must prove it")
	fs.StringSliceVar(&f.nodeIPs, "node-ip", nil, "this node's IP (repeatable); dials to --node-name go to the first")
	fs.StringSliceVar(&f.podCIDRs, "pod-cidr", nil, "this node's pod CIDR (repeatable; the server must trust agent routes)")
	fs.BoolVar(&f.cfg.DefaultRoute, "default-route", false, "serve every destination no other agent claims, such as service IPs (the server must trust agent routes)")
	fs.BoolVar(&f.cfg.ResolveNames, "resolve-names", false, "look up destination names other than --node-name in the node's resolver (for webhooks or APIServices configured by URL with a host name); by default only IP addresses and the node's own name are dialed")
	fs.StringSliceVar(&f.allowCIDRs, "allow-cidr", nil, "a range this agent may dial besides its node IPs and pod CIDRs, e.g. the service range (repeatable); loopback and link-local addresses need this or --node-ip")
	fs.StringSliceVar(&f.allowPorts, "allow-port", nil, "the only destination ports this agent dials (repeatable; default: any)")
	fs.DurationVar(&f.cfg.MaxDialTimeout, "max-dial-timeout", f.cfg.MaxDialTimeout, "upper bound on any dial this agent makes")
	fs.DurationVar(&f.cfg.HandshakeTimeout, "handshake-timeout", f.cfg.HandshakeTimeout, "bound on connecting, TLS and hello")
	fs.DurationVar(&f.cfg.MinBackoff, "reconnect-min-backoff", f.cfg.MinBackoff, "first wait before reconnecting; doubles up to --reconnect-max-backoff, with jitter")
	fs.DurationVar(&f.cfg.MaxBackoff, "reconnect-max-backoff", f.cfg.MaxBackoff, "longest wait between reconnects")
	fs.DurationVar(&f.cfg.ProbeInterval, "probe-interval", f.cfg.ProbeInterval, "with several server replicas: while holding a session to some but not all, how often (on average, jittered) to connect again to find the others")
	fs.DurationVar(&f.cfg.DrainTimeout, "drain-timeout", f.cfg.DrainTimeout, "on SIGTERM, how long open tunnels may go on after the server is told to route nothing new here")
	f.ssh.bind(fs)
	f.reload.Bind(fs)
	f.log.Bind(fs)
	f.bindOps(fs)
}

// configFlags names the flag bound to each AgentConfig field.
var configFlags = map[string]string{
	"ServerAddress":    "server-address",
	"TLS":              "tls-cert-file",
	"NodeName":         "node-name",
	"MaxDialTimeout":   "max-dial-timeout",
	"HandshakeTimeout": "handshake-timeout",
	"MinBackoff":       "reconnect-min-backoff",
	"MaxBackoff":       "reconnect-max-backoff",
	"ProbeInterval":    "probe-interval",
	"DrainTimeout":     "drain-timeout",
	"AllowCIDRs":       "allow-cidr",
	"AllowPorts":       "allow-port",

	"KeepaliveInterval": "keepalive-interval",
	"KeepaliveTimeout":  "keepalive-timeout",
}

func run(args []string) int {
	f := agentFlags{cfg: tunnel.DefaultAgentConfig()}
	fs := pflag.NewFlagSet(prog, pflag.ContinueOnError)
	f.bind(fs)
	err := cli.Parse(fs, args)
	if err == nil && f.admin.ShowVersion {
		admin.PrintVersion(prog)
		return 0
	}
	if err == nil {
		err = runAgent(&f, fs)
	}
	return cli.Exit(prog, fs, err)
}

func runAgent(f *agentFlags, fs *pflag.FlagSet) error {
	if err := cli.Required(fs, f.ssh.required()...); err != nil { // ssh.go: the transport's flags
		return err
	}
	var err error
	if f.cfg.NodeIPs, err = cli.IPs("node-ip", f.nodeIPs); err != nil {
		return err
	}
	if f.cfg.PodCIDRs, err = cli.Prefixes("pod-cidr", f.podCIDRs); err != nil {
		return err
	}
	if f.cfg.AllowCIDRs, err = cli.Prefixes("allow-cidr", f.allowCIDRs); err != nil {
		return err
	}
	if f.cfg.AllowPorts, err = cli.Ports("allow-port", f.allowPorts); err != nil {
		return err
	}
	if f.cfg.Logger, err = f.log.Logger(); err != nil {
		return err
	}
	if err := f.reload.Validate(); err != nil {
		return err
	}
	var reloading []cli.Reloader
	if f.ssh.enabled() {
		err = f.ssh.configure(&f.cfg) // ssh.go
	} else {
		reloading, err = f.configureTLS()
	}
	if err != nil {
		return err
	}
	// sd_notify: READY=1 each time a session registers, STOPPING=1 on a signal.
	f.cfg.OnRegistered = func() { cli.NotifyLogged(f.cfg.Logger, "READY=1") }
	reg := admin.NewRegistry() // ops.go
	f.cfg.Registerer = reg
	agent, err := tunnel.NewAgent(f.cfg)
	if err != nil {
		return cli.FromConfig(err, configFlags)
	}
	loops, adm, err := f.startAdmin(reg, agent, f.cfg.Logger)
	if err != nil {
		return err
	}
	defer adm.Close()
	ctx, stop := cli.SignalContext()
	defer stop()
	defer cli.NotifyWhenDone(ctx, f.cfg.Logger, "STOPPING=1")() // sd_notify
	cli.WatchCerts(ctx, f.cfg.Logger, f.reload.Interval, admin.NewCertExpiry(reg).Track(reloading...)...)
	f.cfg.Logger.Info("tunnel-agent started", "node", f.cfg.NodeName, "server", f.cfg.ServerAddress)
	err = loops.Run(runLoop, func() error { return agent.Run(ctx) })
	f.cfg.Logger.Info("tunnel-agent stopped")
	return err
}

// configureTLS loads the TLS transport's certificates, which reload from
// disk as they change.
func (f *agentFlags) configureTLS() ([]cli.Reloader, error) {
	pair, err := cli.ReloadingKeyPair("tls-cert-file", f.certFile, f.keyFile)
	if err != nil {
		return nil, err
	}
	roots, err := cli.ReloadingPool("ca-file", f.caFile)
	if err != nil {
		return nil, err
	}
	serverName := f.serverName
	if serverName == "" {
		if serverName, _, err = net.SplitHostPort(f.cfg.ServerAddress); err != nil {
			return nil, &cli.FlagError{Flag: "server-address", Msg: fmt.Sprintf("%q is not host:port", f.cfg.ServerAddress)}
		}
	}
	f.cfg.TLS = certs.ClientTLS(pair, roots, serverName)
	return []cli.Reloader{pair, roots}, nil
}
