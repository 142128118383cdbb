//go:build linux

package process

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// The SSH transport with the real binaries: `tunnel-server certs --ssh`
// writes the keys, the server serves --ssh-listen-address beside its TLS
// port, and an agent with --transport=ssh registers and carries the same
// traffic as over TLS. An agent whose known_hosts names another host key
// never registers.

// sshKnownHosts writes a known_hosts file trusting the server's generated
// host key at addr, and returns its path.
func sshKnownHosts(t *testing.T, cs *certSet, addr string, hostKeyPub string) string {
	t.Helper()
	pub, err := os.ReadFile(hostKeyPub)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(addr, ":")
	fields := strings.Fields(string(pub))
	path := filepath.Join(t.TempDir(), "known_hosts")
	line := "[" + host + "]:" + port + " " + fields[0] + " " + fields[1] + "\n"
	if err := os.WriteFile(path, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startSSHServer starts a server with an SSH listener and returns it with
// that listener's address.
func startSSHServer(t *testing.T) (*server, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	mustRun(t, serverBin(), "certs", "--out", dir, "--node", nodeA+"="+nodeAIP, "--ssh")
	cs := &certSet{dir: dir}
	srv := startServer(t, cs, serverOpts{extra: []string{
		"--ssh-listen-address", "127.0.0.1:0",
		"--ssh-host-key-file", cs.path("ssh_host_ed25519_key"),
		"--ssh-authorized-keys-file", cs.path("authorized_keys"),
	}})
	return srv, srv.waitListeners(t, []string{"ssh"})["ssh"]
}

func sshAgentArgv(srv *server, sshAddr, knownHosts string) []string {
	return []string{agentBin(), "--transport", "ssh",
		"--server-address", sshAddr,
		"--ssh-key-file", srv.certs.path("agent-" + nodeA + "-ssh"),
		"--ssh-known-hosts-file", knownHosts,
		"--node-name", nodeA, "--node-ip", nodeAIP,
		"--admin-listen-address", "127.0.0.1:0"}
}

func TestSSHTransportReachesNode(t *testing.T) {
	t.Parallel()
	srv, sshAddr := startSSHServer(t)
	known := sshKnownHosts(t, srv.certs, sshAddr, srv.certs.path("ssh_host_ed25519_key.pub"))
	agent := startProc(t, "tunnel-agent ssh", nil, sshAgentArgv(srv, sshAddr, known)...)
	if m := agent.waitLog(t, registeredRE, startTimeout); m[1] != nodeA {
		t.Fatalf("agent registered as node %q, want %q", m[1], nodeA)
	}
	checkReachesNode(t, udsDialer(srv.udsPath))

	agent.signal(t, syscall.SIGTERM)
	if code := agent.waitExit(t, stopTimeout); code != 0 {
		t.Fatalf("agent exited %d on SIGTERM", code)
	}
}

func TestSSHTransportWrongHostKeyRefused(t *testing.T) {
	t.Parallel()
	srv, sshAddr := startSSHServer(t)
	other := filepath.Join(t.TempDir(), "other")
	mustRun(t, serverBin(), "certs", "--out", other, "--ssh")
	known := sshKnownHosts(t, srv.certs, sshAddr, filepath.Join(other, "ssh_host_ed25519_key.pub"))
	agent := startProc(t, "tunnel-agent ssh", nil, sshAgentArgv(srv, sshAddr, known)...)
	agent.waitLog(t, hostKeyMismatchRE, startTimeout)
	if strings.Contains(agent.out.String(), "msg=registered") {
		t.Fatal("agent registered with a server whose host key known_hosts does not hold")
	}
}

// hostKeyMismatchRE matches the agent's log of knownhosts refusing a
// changed host key.
var hostKeyMismatchRE = regexp.MustCompile(`connecting failed.*key mismatch`)
