package main

import (
	"fmt"

	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

// sshFlags choose the transport and configure the SSH one.
type sshFlags struct {
	transport      transportFlag
	keyFile        string
	knownHostsFile string
}

// bindTransport adds --transport.
func (f *sshFlags) bindTransport(fs *pflag.FlagSet) {
	f.transport = "tls"
	fs.Var(&f.transport, "transport", "how to reach the server: tls (TLS 1.3 + yamux, --tls-* flags) or ssh (the server's --ssh-listen-address, --ssh-* flags)")
}

// bind adds the SSH transport's flags.
func (f *sshFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.keyFile, "ssh-key-file", "", "OpenSSH private key (--transport=ssh); a certificate beside it as KEY-cert.pub is presented instead of the bare key")
	fs.StringVar(&f.knownHostsFile, "ssh-known-hosts-file", "", "known_hosts file that verifies the server's host key, or its host certificate with an @cert-authority line (--transport=ssh)")
}

func (f *sshFlags) enabled() bool { return f.transport == "ssh" }

// required lists the flags the chosen transport cannot do without.
func (f *sshFlags) required() []string {
	if f.enabled() {
		return []string{"server-address", "ssh-key-file", "ssh-known-hosts-file", "node-name"}
	}
	return []string{"server-address", "ca-file", "tls-cert-file", "tls-private-key-file", "node-name"}
}

// configure loads the SSH key and known_hosts into cfg.SSH.
func (f *sshFlags) configure(cfg *tunnel.AgentConfig) error {
	signer, err := certs.LoadSSHSigner(f.keyFile)
	if err != nil {
		return cli.Blame("ssh-key-file", err)
	}
	hostKeys, err := knownhosts.New(f.knownHostsFile)
	if err != nil {
		return cli.Blame("ssh-known-hosts-file", err)
	}
	cfg.SSH = &tunnel.AgentSSHConfig{Signer: signer, HostKeyCallback: hostKeys}
	return nil
}

// transportFlag is --transport: "tls" or "ssh", checked as it is parsed.
type transportFlag string

func (t *transportFlag) String() string { return string(*t) }
func (t *transportFlag) Type() string   { return "tls|ssh" }

func (t *transportFlag) Set(v string) error {
	if v != "tls" && v != "ssh" {
		return fmt.Errorf("%q is neither tls nor ssh", v)
	}
	*t = transportFlag(v)
	return nil
}
