package benchmarks

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/tunnel"
)

// The SSH transport beside TLS + yamux, in the same run: a second server
// whose agent connects over SSH (golang.org/x/crypto/ssh, ed25519 keys,
// AES-128-GCM), its own CONNECT socket, the same target. Its results are
// the "tunnel-ssh" path of every benchmark.

// startSSH starts the SSH server and agent and sets e.sshTunnel.
func (e *inProcess) startSSH(files certs.Files) error {
	srv, err := e.newServer(files)
	if err != nil {
		return err
	}
	hostKey, agentKey := newSigner(), newSigner()
	sshCfg := tunnel.SSHServerConfig{HostKeys: []ssh.Signer{hostKey},
		AuthorizedKeys: []certs.SSHAuthorizedKey{{Key: agentKey.PublicKey(), Nodes: []string{benchNode.Name}, IPs: benchNode.IPs}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sock := filepath.Join(e.dir, "connect-ssh.sock")
	udsLn, err := tunnel.ListenUnix(sock, 0o600)
	if err != nil {
		ln.Close()
		return err
	}
	e.goServe(func() error { return srv.ServeSSHAgents(ln, sshCfg) }, ln.Close)
	e.goServe(func() error { return srv.ServeConnect(udsLn) }, udsLn.Close)
	e.sshTunnel = ConnectDialer{Network: "unix", Addr: sock, Dest: e.direct.Addr}

	acfg := tunnel.DefaultAgentConfig()
	acfg.ServerAddress = ln.Addr().String()
	acfg.SSH = &tunnel.AgentSSHConfig{Signer: agentKey, HostKeyCallback: ssh.FixedHostKey(hostKey.PublicKey())}
	acfg.NodeName, acfg.NodeIPs = benchNode.Name, benchNode.IPs
	return e.runAgent(acfg, srv)
}

func newSigner() ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		panic(err)
	}
	return s
}
