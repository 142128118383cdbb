package tunnel

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/crypto/ssh"
)

// AgentSSHConfig configures an agent's SSH transport (AgentConfig.SSH).
type AgentSSHConfig struct {
	// Signer is the agent's private key (certs.LoadSSHSigner), presenting
	// its user certificate if it has one.
	Signer ssh.Signer
	// HostKeyCallback verifies the server's host key or host certificate,
	// typically knownhosts.New over a known_hosts file. Required: there is
	// no default, and never one that accepts any key.
	HostKeyCallback ssh.HostKeyCallback
	// HostKeyAlgorithms, if set, limits the host key types the agent
	// accepts (list the known_hosts key's type when the server has several).
	HostKeyAlgorithms []string
	// User is the SSH user name the agent logs in as. Default: NodeName.
	// The server takes the node from the key or certificate, not from it.
	User string
}

func (c *AgentSSHConfig) validate() error {
	switch {
	case c.Signer == nil:
		return &ConfigError{Field: "SSH.Signer", Msg: "a private key is required"}
	case c.HostKeyCallback == nil:
		return &ConfigError{Field: "SSH.HostKeyCallback", Msg: "a known_hosts file to verify the server is required"}
	}
	return nil
}

// dialSSH connects an agent to the server's SSH listener at addr.
func dialSSH(ctx context.Context, addr string, c *AgentSSHConfig, user string) (Session, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	var hostKey ssh.PublicKey
	cc := &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(c.Signer)},
		HostKeyAlgorithms: c.HostKeyAlgorithms,
		ClientVersion:     "SSH-2.0-tunnel-agent",
		HostKeyCallback: func(host string, remote net.Addr, key ssh.PublicKey) error {
			hostKey = key
			return c.HostKeyCallback(host, remote, key)
		},
	}
	stop := bindDeadline(ctx, raw)
	conn, chans, reqs, err := ssh.NewClientConn(raw, addr, cc)
	stop()
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
	}
	peer := Identity{Transport: TransportSSH, Subject: "ssh host key " + ssh.FingerprintSHA256(hostKey)}
	return newSSHSession(conn, chans, reqs, peer, false), nil
}
