// Command tunnel-agent runs on every node. It dials out to tunnel-server,
// proves its node identity with a client certificate, keeps one multiplexed
// TLS connection open, and dials destinations on the node's network for the
// control plane.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/admin"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

const prog = "tunnel-agent"

func main() { os.Exit(program().Run(os.Args[1:])) }

// program is tunnel-agent with its commands.
func program() *cli.Program {
	return &cli.Program{
		Name: prog,
		Summary: "tunnel-agent runs on every node: it dials out to tunnel-server, proves its node with a client\n" +
			"certificate (or SSH key), and dials destinations on the node's network for the control plane.",
		Main:    cli.Command{Setup: setupAgent},
		Version: func() string { return admin.Build().String() },
	}
}

// The agent's flag groups, in the order --help lists them.
const (
	groupServer = "Server connection"
	groupNode   = "Node and routing"
	groupPolicy = "Destination policy"
)

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

// bind adds every flag, each to its group.
func (f *agentFlags) bind(g *cli.FlagGroups) {
	for _, name := range []string{groupServer, cli.GroupTLS, cli.GroupSSH, groupNode, groupPolicy, cli.GroupObservability, cli.GroupGeneral} {
		g.Group(name) // the order of --help
	}
	f.bindServer(g.Group(groupServer))
	f.bindTLS(g.Group(cli.GroupTLS))
	f.ssh.bind(g.Group(cli.GroupSSH)) // ssh.go
	f.bindNode(g.Group(groupNode))
	f.bindPolicy(g.Group(groupPolicy))
	f.bindOps(g) // ops.go
	f.log.Bind(g.Group(cli.GroupObservability))
	g.Group(cli.GroupGeneral).DurationVar(&f.cfg.DrainTimeout, "drain-timeout", f.cfg.DrainTimeout, "on SIGTERM, how long open tunnels may go on after the server is told to route new dials here only when no other agent serves them")
	g.Group(cli.GroupGeneral).StringVar(&f.cfg.HandoffSocket, "handoff-socket", "", "unix socket path on the node (in a directory only the agent's user can write) through which a draining agent hands its open tunnels to the agent started after it, so a rollout cuts no connection; off when empty")
	g.Group(cli.GroupGeneral).DurationVar(&f.cfg.DrainIdle, "drain-idle", f.cfg.DrainIdle, "during a drain, close a tunnel quiet this long since the node last answered (an idle keep-alive); a busy keep-alive, and in the last quarter of --drain-timeout any tunnel, after 5ms of quiet")
}

// bindServer adds the flags of the connection to the server.
func (f *agentFlags) bindServer(fs *pflag.FlagSet) {
	fs.StringVar(&f.cfg.ServerAddress, "server-address", "", "host:port of tunnel-server's agent port (with --transport=ssh, its --ssh-listen-address)")
	f.ssh.bindTransport(fs) // ssh.go
	fs.DurationVar(&f.cfg.HandshakeTimeout, "handshake-timeout", f.cfg.HandshakeTimeout, "bound on connecting, TLS and hello")
	fs.DurationVar(&f.cfg.MinBackoff, "reconnect-min-backoff", f.cfg.MinBackoff, "first wait before reconnecting; doubles up to --reconnect-max-backoff, with jitter")
	fs.DurationVar(&f.cfg.MaxBackoff, "reconnect-max-backoff", f.cfg.MaxBackoff, "longest wait between reconnects")
	fs.DurationVar(&f.cfg.ProbeInterval, "probe-interval", f.cfg.ProbeInterval, "with several server replicas: while holding a session to some but not all, how often (on average, jittered) to connect again to find the others")
}

// bindTLS adds the TLS transport's certificate, key and CA flags.
func (f *agentFlags) bindTLS(fs *pflag.FlagSet) {
	fs.StringVar(&f.caFile, "ca-file", "", "CA bundle that verifies the server's certificate")
	fs.StringVar(&f.certFile, "tls-cert-file", "", "agent client certificate (PEM): CN=system:node:NODE_NAME or a DNS SAN NODE_NAME")
	fs.StringVar(&f.keyFile, "tls-private-key-file", "", "private key of --tls-cert-file (PEM)")
	fs.StringVar(&f.serverName, "server-name", "", "name to verify in the server's certificate (default: the host of --server-address)")
	f.reload.Bind(fs)
}

// bindNode adds the flags of the node's identity and routes.
func (f *agentFlags) bindNode(fs *pflag.FlagSet) {
	fs.StringVar(&f.cfg.NodeName, "node-name", "", "this node's name; the certificate must prove it")
	fs.StringSliceVar(&f.nodeIPs, "node-ip", nil, "this node's IP (repeatable); dials to --node-name go to the first")
	fs.StringSliceVar(&f.podCIDRs, "pod-cidr", nil, "this node's pod CIDR (repeatable; the server must trust agent routes)")
	fs.BoolVar(&f.cfg.DefaultRoute, "default-route", false, "serve every destination no other agent claims, such as service IPs (the server must trust agent routes)")
}

// bindPolicy adds the destination policy's flags (tunnel/policy.go).
func (f *agentFlags) bindPolicy(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.allowCIDRs, "allow-cidr", nil, "a range this agent may dial besides its node IPs and pod CIDRs, e.g. the service range (repeatable); loopback and link-local addresses need this or --node-ip")
	fs.StringSliceVar(&f.allowPorts, "allow-port", nil, "the only destination ports this agent dials (repeatable; default: any)")
	fs.BoolVar(&f.cfg.ResolveNames, "resolve-names", false, "look up destination names other than --node-name in the node's resolver (for webhooks or APIServices configured by URL with a host name); by default only IP addresses and the node's own name are dialed")
	fs.DurationVar(&f.cfg.MaxDialTimeout, "max-dial-timeout", f.cfg.MaxDialTimeout, "upper bound on any dial this agent makes")
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
	"DrainIdle":        "drain-idle",
	"HandoffSocket":    "handoff-socket",
	"AllowCIDRs":       "allow-cidr",
	"AllowPorts":       "allow-port",

	"KeepaliveInterval": "keepalive-interval",
	"KeepaliveTimeout":  "keepalive-timeout",
}

// setupAgent binds the agent's flags and returns what runs it.
func setupAgent(g *cli.FlagGroups, _ io.Writer) func() error {
	f := &agentFlags{cfg: tunnel.DefaultAgentConfig()}
	f.bind(g)
	return func() error { return runAgent(f, g.Set()) }
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
	warnBroadRanges(f.cfg.Logger, f.cfg.AllowCIDRs)
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
	pair, err := cli.ReloadingKeyPair("tls-cert-file", "tls-private-key-file", f.certFile, f.keyFile)
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

// warnBroadRanges warns of an --allow-cidr that covers a whole address
// family: the control plane may then dial anything the node can reach,
// special addresses aside (tunnel's destination policy still refuses
// loopback and link-local unless named).
func warnBroadRanges(log *slog.Logger, allow []netip.Prefix) {
	for _, p := range allow {
		if p.Bits() == 0 {
			log.Warn("an allowed range covers every address: the control plane may dial anything the node can reach, not just its own addresses and pods", "flag", "--allow-cidr",
				"cidr", p.String(), "hint", "name the ranges it needs, such as the service range")
		}
	}
}
