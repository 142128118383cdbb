package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/crypto/ssh"

	"github.com/tunnel-project/tunnel/certs"
)

// SSHServerConfig configures the server's SSH listener for agents
// (Server.ServeSSHAgents). An agent proves its node by a key listed in
// AuthorizedKeys or by a user certificate signed by one of UserCAs; at
// least one of the two is required.
type SSHServerConfig struct {
	// HostKeys are the server's host keys (ssh.NewCertSigner makes one
	// present a host certificate). At least one.
	HostKeys []ssh.Signer
	// AuthorizedKeys are agent keys and the nodes and IPs each proves
	// (certs.LoadSSHAuthorizedKeys: the principals="NODE" option).
	AuthorizedKeys []certs.SSHAuthorizedKey
	// UserCAs sign agent user certificates; a certificate proves the nodes
	// its principals name ("system:node:NAME" or "NAME") and the IPs of its
	// certs.SSHNodeIPsExtension.
	UserCAs []ssh.PublicKey
}

// Validate reports the first setting that cannot work, as a *ConfigError.
func (c *SSHServerConfig) Validate() error {
	switch {
	case len(c.HostKeys) == 0:
		return &ConfigError{Field: "SSH.HostKeys", Msg: "a host key is required"}
	case len(c.AuthorizedKeys) == 0 && len(c.UserCAs) == 0:
		return &ConfigError{Field: "SSH.AuthorizedKeys", Msg: "authorized keys or a user CA are required"}
	}
	return nil
}

// identityKey is the ssh.Permissions.ExtraData key of the agent's Identity.
type identityKey struct{}

// serverConfig builds the x/crypto/ssh configuration: public-key
// authentication only, against AuthorizedKeys and UserCAs.
func (c *SSHServerConfig) serverConfig() *ssh.ServerConfig {
	keys := make(map[string]certs.SSHAuthorizedKey, len(c.AuthorizedKeys))
	for _, k := range c.AuthorizedKeys {
		keys[string(k.Key.Marshal())] = k
	}
	cas := make(map[string]bool, len(c.UserCAs))
	for _, k := range c.UserCAs {
		cas[string(k.Marshal())] = true
	}
	checker := &ssh.CertChecker{
		IsUserAuthority:          func(k ssh.PublicKey) bool { return cas[string(k.Marshal())] },
		SupportedCriticalOptions: []string{"source-address"}, // enforced by x/crypto/ssh
	}
	sc := &ssh.ServerConfig{
		ServerVersion: "SSH-2.0-tunnel-server",
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			var id Identity
			var err error
			if cert, ok := key.(*ssh.Certificate); ok {
				id, err = certIdentity(checker, cert)
			} else if k, ok := keys[string(key.Marshal())]; ok {
				id = Identity{Transport: TransportSSH, Subject: "ssh key " + ssh.FingerprintSHA256(key), Nodes: k.Nodes, IPs: k.IPs}
			} else {
				err = fmt.Errorf("ssh key %s is not authorized", ssh.FingerprintSHA256(key))
			}
			if err != nil {
				return nil, err
			}
			perms := &ssh.Permissions{ExtraData: map[any]any{identityKey{}: id}}
			if cert, ok := key.(*ssh.Certificate); ok {
				perms.CriticalOptions = cert.CriticalOptions
			}
			return perms, nil
		},
	}
	for _, k := range c.HostKeys {
		sc.AddHostKey(k)
	}
	return sc
}

// certIdentity checks an agent's user certificate — type, signing CA,
// validity window, critical options, signature — and returns what its
// principals prove. A certificate without principals would be valid for
// every user in OpenSSH's reading; here it proves nothing and is refused.
func certIdentity(checker *ssh.CertChecker, cert *ssh.Certificate) (Identity, error) {
	switch {
	case cert.CertType != ssh.UserCert:
		return Identity{}, errors.New("ssh certificate is not a user certificate")
	case !checker.IsUserAuthority(cert.SignatureKey):
		return Identity{}, errors.New("ssh certificate signed by an unknown CA")
	case len(cert.ValidPrincipals) == 0:
		return Identity{}, errors.New("ssh certificate names no principal")
	}
	if err := checker.CheckCert(cert.ValidPrincipals[0], cert); err != nil {
		return Identity{}, err
	}
	id := Identity{Transport: TransportSSH, Nodes: certs.SSHNodeNames(cert.ValidPrincipals),
		Subject: fmt.Sprintf("ssh certificate %q serial %d", cert.KeyId, cert.Serial)}
	if v, ok := cert.Extensions[certs.SSHNodeIPsExtension]; ok {
		ips, err := certs.SSHIPs(v)
		if err != nil {
			return Identity{}, fmt.Errorf("ssh certificate extension %s: %w", certs.SSHNodeIPsExtension, err)
		}
		id.IPs = ips
	}
	return id, nil
}

// ServeSSHAgents accepts agents over SSH on ln until ln or the server
// closes. After the SSH handshake an agent goes through the same hello,
// admission, registration, keepalive and drain as on ServeAgents.
func (s *Server) ServeSSHAgents(ln net.Listener, cfg SSHServerConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	sc := cfg.serverConfig()
	return s.serve(ln, &s.agentCap, nil, func(raw net.Conn, registered func(), keep func() func()) { s.handleSSHAgent(raw, sc, registered, keep) })
}

// handleSSHAgent runs the SSH handshake within the handshake timeout, then
// the common registration (runAgent).
func (s *Server) handleSSHAgent(raw net.Conn, sc *ssh.ServerConfig, registered func(), keep func() (end func())) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	if !s.awaitTurn(ctx, raw) {
		raw.Close()
		return
	}
	sess, err := acceptSSH(ctx, raw, sc)
	if err != nil {
		raw.Close()
		s.handshakeLimit(ctx)
		s.reject(RejectHandshake)
		s.log.Warn("agent rejected", "remote", raw.RemoteAddr().String(), "transport", TransportSSH, "kind", RejectHandshake, "err", err)
		return
	}
	s.runAgent(ctx, sess, raw.RemoteAddr().String(), registered, keep)
}

// acceptSSH completes the server side of an SSH agent connection.
func acceptSSH(ctx context.Context, raw net.Conn, sc *ssh.ServerConfig) (Session, error) {
	stop := bindDeadline(ctx, raw)
	conn, chans, reqs, err := ssh.NewServerConn(raw, sc)
	stop()
	if err != nil {
		return nil, fmt.Errorf("ssh handshake: %w", err)
	}
	id, ok := conn.Permissions.ExtraData[identityKey{}].(Identity)
	if !ok { // cannot happen: every accepted key carries one
		conn.Close()
		return nil, errors.New("ssh handshake: no identity")
	}
	return newSSHSession(conn, chans, reqs, id, true), nil
}
