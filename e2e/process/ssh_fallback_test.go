//go:build linux

package process

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// The SSH fallback with the real binary and a real OpenSSH sshd: the
// server runs in one network namespace with --ssh-fallback-*, sshd and an
// echo target run in the node namespace, and a policy-routing rule there
// refuses the target's port to packets arriving over the veth, so the
// server's namespace reaches the target only through sshd's direct-tcpip
// (sshd connects to it over the node's lo). Everything is the test's own:
// sshd's host key, configuration, authorized_keys and the server's
// known_hosts — no system sshd, no port 22.

const sshdPath = "/usr/sbin/sshd"

// fallbackSSHPort is sshd's port inside the node namespace, which the test
// creates empty: nothing else can hold it.
const fallbackSSHPort = "2222"

// fallbackNode is sshd and the target inside the node namespace.
type fallbackNode struct {
	n          netnsTopology
	sshdAddr   string // nodeIP:fallbackSSHPort
	targetAddr string // nodeIP:port, refused over the veth
	dir        string
	clientKey  string // private key sshd's authorized_keys admits
	hostKeyPub string // sshd's host public key
	user       string
}

// fallbackDialRE matches the server's debug line for a successful dial and
// captures which route served it: a node name, or ssh-fallback:IP.
var fallbackDialRE = regexp.MustCompile(`msg="dial ok" .*node=(\S+) dest=(\S+)`)

func TestSSHFallbackThroughOpenSSHInNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces and sshd need root (run go test as root)")
	}
	for _, bin := range []string{"ip", sshdPath, "ssh-keygen"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: %s is not installed (iproute2, openssh-server)", bin)
		}
	}
	nd := startFallbackNode(t)
	n := nd.n

	cs := newCerts(t, []string{n.srvIP.String()}, nodeA+"="+n.nodeIP.String())
	srv := startServer(t, cs, serverOpts{listenHost: n.srvIP.String(), wrap: inNS(n.srvNS),
		extra: nd.fallbackFlags(t, nd.hostKeyPub)})
	dial := udsDialer(srv.udsPath)

	t.Run("echo 1MiB through sshd", func(t *testing.T) {
		checkEcho(t, mustConnect(t, dial, nd.targetAddr), 1<<20)
		nd.expectServedBy(t, srv, "ssh-fallback:"+n.nodeIP.String())
	})
	t.Run("half-close through sshd", func(t *testing.T) {
		checkHalfClose(t, mustConnect(t, dial, nd.targetAddr), 256<<10)
	})
	t.Run("wrong host key in known_hosts", func(t *testing.T) {
		other := filepath.Join(t.TempDir(), "other_host_key")
		mustRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other)
		bad := startServer(t, cs, serverOpts{listenHost: n.srvIP.String(),
			wrap: inNS(n.srvNS), extra: nd.fallbackFlags(t, other+".pub")})
		_, status := connectStatus(t, udsDialer(bad.udsPath), nd.targetAddr)
		if statusCode(status) != 502 || !strings.Contains(status, "key mismatch") {
			t.Fatalf("status %q, want 502 naming the host key mismatch", status)
		}
	})
	t.Run("an agent wins over the fallback", func(t *testing.T) {
		agent := startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{n.nodeIP.String()}, wrap: inNS(n.nodeNS)})
		c := mustConnect(t, dial, nd.targetAddr)
		checkEcho(t, c, 64<<10)
		nd.expectServedBy(t, srv, nodeA)
		c.Close() // or the agent's drain waits for it

		agent.signal(t, syscall.SIGTERM)
		if code := agent.waitExit(t, stopTimeout); code != 0 {
			t.Fatalf("agent exited %d on SIGTERM", code)
		}
		srv.waitLog(t, regexp.MustCompile(`msg="agent disconnected" node=`+nodeA), startTimeout)
		checkEcho(t, mustConnect(t, dial, nd.targetAddr), 64<<10) // back to the fallback
		nd.expectServedBy(t, srv, "ssh-fallback:"+n.nodeIP.String())
	})
}

// startFallbackNode creates the namespaces, starts the echo target and
// sshd in the node namespace, closes the target's port to the veth, and
// checks that the server namespace reaches sshd but not the target.
func startFallbackNode(t *testing.T) *fallbackNode {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	nd := &fallbackNode{n: newNetnsTopology(os.Getpid()), dir: t.TempDir(), user: u.Username}
	n := nd.n
	n.setup(t)
	target := startProc(t, "echo target in "+n.nodeNS, helperEnv("echo", net.JoinHostPort(n.nodeIP.String(), "0")),
		append(inNS(n.nodeNS), testBinary(t))...)
	nd.targetAddr = target.waitLog(t, helperListeningRE, startTimeout)[1]
	_, port, _ := net.SplitHostPort(nd.targetAddr)
	refusePort(t, n, port)
	nd.startSSHD(t)

	if ok, out := dialFrom(t, n.nodeNS, nd.targetAddr); !ok {
		t.Fatalf("control: the target is not reachable inside its own namespace: %s", out)
	}
	if ok, out := dialFrom(t, n.srvNS, nd.targetAddr); ok {
		t.Fatalf("the target %s is reachable from the server namespace directly; the test proves nothing: %s", nd.targetAddr, out)
	}
	if ok, out := dialFrom(t, n.srvNS, nd.sshdAddr); !ok {
		t.Fatalf("control: sshd is not reachable from the server namespace: %s", out)
	}
	return nd
}

// refusePort makes the node namespace refuse TCP packets for port that
// arrive over the veth: a policy-routing rule ahead of the local table
// (moved from priority 0, which a rule cannot precede, to 100), so the
// route lookup fails for them while packets over lo are delivered.
func refusePort(t *testing.T, n netnsTopology, port string) {
	t.Helper()
	rule := append(inNS(n.nodeNS), "ip", "rule")
	mustRun(t, append(rule, "add", "pref", "100", "table", "local")...)
	mustRun(t, append(rule, "del", "pref", "0", "table", "local")...)
	mustRun(t, append(rule, "add", "pref", "10", "iif", n.nodeVeth, "ipproto", "tcp", "dport", port, "prohibit")...)
}

// startSSHD writes sshd's keys and configuration and runs it in the node
// namespace until the test ends.
func (nd *fallbackNode) startSSHD(t *testing.T) {
	t.Helper()
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation directory
		t.Fatal(err)
	}
	os.Chmod(nd.dir, 0o755)
	hostKey := filepath.Join(nd.dir, "ssh_host_ed25519_key")
	nd.hostKeyPub = hostKey + ".pub"
	nd.clientKey = filepath.Join(nd.dir, "fallback_key")
	for _, k := range []string{hostKey, nd.clientKey} {
		mustRun(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k)
	}
	pub, err := os.ReadFile(nd.clientKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	authKeys := filepath.Join(nd.dir, "authorized_keys")
	writeTestFile(t, authKeys, string(pub))
	nd.sshdAddr = net.JoinHostPort(nd.n.nodeIP.String(), fallbackSSHPort)
	conf := filepath.Join(nd.dir, "sshd_config")
	writeTestFile(t, conf, fmt.Sprintf(`ListenAddress %s
HostKey %s
AuthorizedKeysFile %s
PidFile none
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers %s
AllowTcpForwarding yes
LogLevel VERBOSE
`, nd.sshdAddr, hostKey, authKeys, nd.user))
	sshd := startProc(t, "sshd in "+nd.n.nodeNS, nil, append(inNS(nd.n.nodeNS), sshdPath, "-D", "-e", "-f", conf)...)
	sshd.waitLog(t, regexp.MustCompile(`Server listening on `+regexp.QuoteMeta(nd.n.nodeIP.String())), startTimeout)
}

// fallbackFlags are the server's --ssh-fallback-* flags for this node,
// with a known_hosts file that trusts the host public key in hostKeyPub.
func (nd *fallbackNode) fallbackFlags(t *testing.T, hostKeyPub string) []string {
	t.Helper()
	pub, err := os.ReadFile(hostKeyPub)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(pub))
	known := filepath.Join(t.TempDir(), "known_hosts")
	writeTestFile(t, known, "["+nd.n.nodeIP.String()+"]:"+fallbackSSHPort+" "+f[0]+" "+f[1]+"\n")
	return []string{"--log-level", "debug",
		"--ssh-fallback-cidr", nd.n.nodeIP.String() + "/32",
		"--ssh-fallback-user", nd.user,
		"--ssh-fallback-key-file", nd.clientKey,
		"--ssh-known-hosts-file", known,
		"--ssh-fallback-port", fallbackSSHPort}
}

// expectServedBy requires the server's latest successful dial to the
// target to have gone through route (a node name or ssh-fallback:IP).
func (nd *fallbackNode) expectServedBy(t *testing.T, srv *server, route string) {
	t.Helper()
	var last []string
	for _, m := range fallbackDialRE.FindAllStringSubmatch(srv.out.String(), -1) {
		if m[2] == nd.targetAddr {
			last = m
		}
	}
	if last == nil || last[1] != route {
		t.Fatalf("last dial to %s went %v, want through %s", nd.targetAddr, last, route)
	}
}

func writeTestFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
