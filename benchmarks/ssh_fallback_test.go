package benchmarks

import (
	"net/netip"
	"path/filepath"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/internal/sshdtest"
	"github.com/tunnel-project/tunnel/tunnel"
)

// The SSH fallback beside the agent transports, in the same run: a third
// server with no agent at all, whose fallback covers the target's address
// and reaches it through a real OpenSSH sshd (internal/sshdtest) on that
// address — one SSH connection to sshd, one direct-tcpip channel per
// tunnel, sshd connecting to the target. Its results are the
// "tunnel-ssh-fallback" path of every benchmark, skipped where sshd cannot
// run (not installed, or not root).

// startSSHFallback starts sshd and the fallback server and sets
// e.fallbackTunnel, or e.fallbackSkip when sshd cannot run here.
func (e *inProcess) startSSHFallback(files certs.Files) error {
	if why := sshdtest.Unavailable(); why != "" {
		e.fallbackSkip = why
		return nil
	}
	targetIP := netip.MustParseAddrPort(e.direct.Addr).Addr()
	d, err := sshdtest.Start(filepath.Join(e.dir, "sshd"), targetIP.String(), nil)
	if err != nil {
		return err
	}
	e.stops = append(e.stops, func() { d.Close() })
	srv, err := e.newServer(files)
	if err != nil {
		return err
	}
	err = srv.EnableSSHFallback(tunnel.SSHFallbackConfig{
		CIDRs: []netip.Prefix{netip.PrefixFrom(targetIP, 32)}, User: d.User, Signer: d.Client,
		HostKeyCallback: ssh.FixedHostKey(d.HostKey), Port: d.Port,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
	})
	if err != nil {
		return err
	}
	sock := filepath.Join(e.dir, "connect-ssh-fallback.sock")
	udsLn, err := tunnel.ListenUnix(sock, 0o600)
	if err != nil {
		return err
	}
	e.goServe(func() error { return srv.ServeConnect(udsLn) }, udsLn.Close)
	e.fallbackTunnel = ConnectDialer{Network: "unix", Addr: sock, Dest: e.direct.Addr}
	return nil
}
