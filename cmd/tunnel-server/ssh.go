package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"

	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

// sshFlags configure the SSH listener for agents and the SSH fallback to
// nodes without an agent.
type sshFlags struct {
	listenAddr, hostKeyFile, authorizedKeysFile, userCAFile string

	fallbackCIDRs                                     []string
	fallbackUser, fallbackKeyFile, fallbackKnownHosts string
	fallbackPort                                      uint16
}

func (f *sshFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.listenAddr, "ssh-listen-address", "", "host:port where agents connect over SSH (agent --transport=ssh), e.g. :"+strconv.Itoa(sshPort)+", the port certs --ssh writes into known_hosts (empty disables)")
	fs.StringVar(&f.hostKeyFile, "ssh-host-key-file", "", "the SSH listener's host key (OpenSSH private key; a host certificate beside it as KEY-cert.pub is presented too)")
	fs.StringVar(&f.authorizedKeysFile, "ssh-authorized-keys-file", "", `agent keys, authorized_keys format; each line names its node with principals="NODE" and may prove node IPs with node-ips="IP,..."`)
	fs.StringVar(&f.userCAFile, "ssh-user-ca-file", "", "CA public keys whose user certificates prove agents' nodes by principal (NODE or system:node:NODE)")
	fs.StringSliceVar(&f.fallbackCIDRs, "ssh-fallback-cidr", nil, "node addresses reached through their own sshd when no agent serves them (repeatable; empty disables the fallback)")
	fs.StringVar(&f.fallbackUser, "ssh-fallback-user", "", "login name on the nodes' sshd")
	fs.StringVar(&f.fallbackKeyFile, "ssh-fallback-key-file", "", "OpenSSH private key for the nodes' sshd (KEY-cert.pub beside it is presented too)")
	fs.StringVar(&f.fallbackKnownHosts, "ssh-known-hosts-file", "", "known_hosts file that verifies the nodes' host keys (or @cert-authority for host certificates)")
	fs.Uint16Var(&f.fallbackPort, "ssh-fallback-port", 22, "the nodes' sshd port")
}

// listen opens the SSH listener for agents, if --ssh-listen-address is set.
func (f *sshFlags) listen() (*listener, error) {
	if f.listenAddr == "" {
		return nil, nil
	}
	cfg, err := f.serverConfig()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", f.listenAddr)
	if err != nil {
		return nil, cli.Blame("ssh-listen-address", err)
	}
	serve := func(srv *tunnel.Server, ln net.Listener) error { return srv.ServeSSHAgents(ln, cfg) }
	return &listener{"ssh", ln, serve}, nil
}

func (f *sshFlags) serverConfig() (tunnel.SSHServerConfig, error) {
	var cfg tunnel.SSHServerConfig
	if f.hostKeyFile == "" {
		return cfg, &cli.FlagError{Flag: "ssh-host-key-file", Msg: "is required with --ssh-listen-address"}
	}
	if f.authorizedKeysFile == "" && f.userCAFile == "" {
		return cfg, &cli.FlagError{Flag: "ssh-authorized-keys-file", Msg: "--ssh-authorized-keys-file or --ssh-user-ca-file is required with --ssh-listen-address"}
	}
	hostKey, err := certs.LoadSSHSigner(f.hostKeyFile)
	if err != nil {
		return cfg, cli.Blame("ssh-host-key-file", err)
	}
	cfg.HostKeys = []ssh.Signer{hostKey}
	if f.authorizedKeysFile != "" {
		if cfg.AuthorizedKeys, err = certs.LoadSSHAuthorizedKeys(f.authorizedKeysFile); err != nil {
			return cfg, cli.Blame("ssh-authorized-keys-file", err)
		}
	}
	if f.userCAFile != "" {
		if cfg.UserCAs, err = certs.LoadSSHPublicKeys(f.userCAFile); err != nil {
			return cfg, cli.Blame("ssh-user-ca-file", err)
		}
	}
	return cfg, nil
}

// enableFallback turns on the SSH fallback if --ssh-fallback-cidr is set.
func (f *sshFlags) enableFallback(srv *tunnel.Server, log *slog.Logger) error {
	if len(f.fallbackCIDRs) == 0 {
		return nil
	}
	cidrs, err := cli.Prefixes("ssh-fallback-cidr", f.fallbackCIDRs)
	if err != nil {
		return err
	}
	for _, req := range [][2]string{{"ssh-fallback-user", f.fallbackUser}, {"ssh-fallback-key-file", f.fallbackKeyFile}, {"ssh-known-hosts-file", f.fallbackKnownHosts}} {
		if req[1] == "" {
			return &cli.FlagError{Flag: req[0], Msg: "is required with --ssh-fallback-cidr"}
		}
	}
	signer, err := certs.LoadSSHSigner(f.fallbackKeyFile)
	if err != nil {
		return cli.Blame("ssh-fallback-key-file", err)
	}
	hostKeys, err := knownhosts.New(f.fallbackKnownHosts)
	if err != nil {
		return cli.Blame("ssh-known-hosts-file", err)
	}
	cfg := tunnel.SSHFallbackConfig{CIDRs: cidrs, User: f.fallbackUser, Signer: signer, HostKeyCallback: hostKeys, Port: f.fallbackPort}
	if err := srv.EnableSSHFallback(cfg); err != nil {
		return err
	}
	log.Info("ssh fallback enabled", "cidrs", cidrs, "user", f.fallbackUser, "port", f.fallbackPort)
	return nil
}

// sshCertsFlags are "tunnel-server certs --ssh": quick-start SSH keys
// beside the certificates.
type sshCertsFlags struct {
	enabled bool
	port    uint16
}

// sshPort is the port the SSH listener is expected on: certs --ssh-port's
// default, named in --ssh-listen-address's help. It is none of the other
// defaults: the agent port 8132 and the admin ports 8133 (server) and 8134
// (agent).
const sshPort = 8135

func (f *sshCertsFlags) bind(fs *pflag.FlagSet) {
	fs.BoolVar(&f.enabled, "ssh", false, "also write SSH keys for the SSH transport: ssh_host_ed25519_key, known_hosts, authorized_keys and agent-NODE-ssh per --node")
	fs.Uint16Var(&f.port, "ssh-port", sshPort, "port of the server's --ssh-listen-address, for known_hosts")
}

func (f *sshCertsFlags) write(stdout io.Writer, out string, nodes, names, ips []string) error {
	if !f.enabled {
		return nil
	}
	opts := certs.SSHOptions{Dir: out}
	for _, n := range nodes {
		node, err := certs.ParseNode(n)
		if err != nil {
			return cli.Blame("node", err)
		}
		opts.Nodes = append(opts.Nodes, node)
	}
	port := strconv.Itoa(int(f.port))
	for _, h := range append(append([]string{"localhost", "127.0.0.1", "::1"}, names...), ips...) {
		opts.ServerAddresses = append(opts.ServerAddresses, net.JoinHostPort(h, port))
	}
	files, err := certs.GenerateSSH(opts)
	if err != nil {
		return generateError(err) // certs.go
	}
	fmt.Fprintf(stdout, "wrote %s %s %s\n", files.HostKey, files.KnownHosts, files.AuthorizedKeys)
	for _, n := range opts.Nodes {
		fmt.Fprintf(stdout, "wrote %s\n", files.Agents[n.Name])
	}
	return nil
}
