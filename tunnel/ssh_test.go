package tunnel

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/tunnel-project/tunnel/certs"
)

// The SSH transport runs through the same in-process suite as TLS:
// TestSSHSuite runs the transport-independent tests again with the
// harness in SSH mode (overSSH), where agents dial the server's SSH
// listener with ed25519 keys listed in its authorized_keys, and verify its
// host key through a known_hosts file.

// sshSuite are the tests TestSSHSuite runs over SSH.
var sshSuite = []struct {
	name string
	test func(*testing.T)
}{
	{"Routing", TestRouting},
	{"DuplicateAgentReplacesOlder", TestDuplicateAgentReplacesOlder},
	{"FailureStatuses", TestFailureStatuses},
	{"HalfClose", TestHalfClose},
	{"ThousandConcurrentTunnels", TestThousandConcurrentTunnels},
	{"AgentLossEndsTunnelsPromptly", TestAgentLossEndsTunnelsPromptly},
	{"AgentRejected", TestAgentRejected},
	{"ServerShutdownDrains", TestServerShutdownDrains},
	{"AgentDrain", TestAgentDrain},
	{"KeepaliveServerDropsSilentAgent", TestKeepaliveServerDropsSilentAgent},
	{"KeepaliveAgentReconnectsFromSilentServer", TestKeepaliveAgentReconnectsFromSilentServer},
	{"MetricsCountTraffic", TestMetricsCountTraffic},
}

func TestSSHSuite(t *testing.T) {
	for _, tc := range sshSuite {
		t.Run(tc.name, tc.test)
	}
}

// overSSH reports whether t runs inside TestSSHSuite.
func overSSH(t *testing.T) bool { return strings.HasPrefix(t.Name(), "TestSSHSuite/") }

// sshHarness is the SSH side of a harness: a host key, a key per test
// node, and the listener agents dial.
type sshHarness struct {
	t          *testing.T
	dir        string
	hostKey    ssh.Signer
	nodeKeys   map[string]ssh.Signer
	knownHosts string // file naming addr with hostKey
	addr       string
	tlsAddr    string // the harness's TLS agent port
}

// startSSH serves SSH agents beside the TLS port and points agentAddr at
// it.
func (h *harness) startSSH() {
	t := h.t
	sh := &sshHarness{t: t, dir: t.TempDir(), hostKey: newSSHKey(t), nodeKeys: map[string]ssh.Signer{}, tlsAddr: h.agentAddr}
	cfg := SSHServerConfig{HostKeys: []ssh.Signer{sh.hostKey}}
	for _, n := range testNodes {
		k := newSSHKey(t)
		sh.nodeKeys[n.Name] = k
		cfg.AuthorizedKeys = append(cfg.AuthorizedKeys, certs.SSHAuthorizedKey{Key: k.PublicKey(), Nodes: []string{n.Name}, IPs: n.IPs})
	}
	ln := listenTCP(t, "127.0.0.1:0")
	sh.addr = ln.Addr().String()
	sh.knownHosts = writeKnownHosts(t, sh.dir, sh.addr, sh.hostKey.PublicKey(), false)
	h.goServe(func() error { return h.srv.ServeSSHAgents(ln, cfg) })
	h.ssh, h.agentAddr = sh, sh.addr
}

// agentConfig is the SSH transport of node's agent.
func (sh *sshHarness) agentConfig(node string) *AgentSSHConfig {
	cb, err := knownhosts.New(sh.knownHosts)
	if err != nil {
		sh.t.Fatal(err)
	}
	// Tests may put a relay in front of the listener (keepalive_test.go):
	// the host key is checked as the listener's, whatever address was dialed.
	check := func(_ string, remote net.Addr, key ssh.PublicKey) error { return cb(sh.addr, remote, key) }
	return &AgentSSHConfig{Signer: sh.nodeKeys[node], HostKeyCallback: check}
}

func newSSHKey(t testing.TB) ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeKnownHosts writes a known_hosts file trusting key for addr (as a
// host key, or as a CA of host certificates) and returns its path.
func writeKnownHosts(t testing.TB, dir, addr string, key ssh.PublicKey, ca bool) string {
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, key)
	if ca {
		line = "@cert-authority " + line
	}
	f, err := os.CreateTemp(dir, "known_hosts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.WriteString(f, line+"\n"); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func TestSSHWrongHostKeyRefused(t *testing.T) {
	h := newHarness(t, nil)
	h.startSSH()
	cfg := h.agentConfig("node-a")
	impostor := writeKnownHosts(t, t.TempDir(), h.ssh.addr, newSSHKey(t).PublicKey(), false)
	cb, err := knownhosts.New(impostor)
	if err != nil {
		t.Fatal(err)
	}
	cfg.SSH.HostKeyCallback = cb
	err = registerOnce(t, cfg)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) || len(ke.Want) == 0 {
		t.Fatalf("got %v, want a knownhosts.KeyError for a changed host key", err)
	}
	// A known_hosts file that does not name the server at all.
	other := writeKnownHosts(t, t.TempDir(), "127.9.9.9:22", h.ssh.hostKey.PublicKey(), false)
	if cfg.SSH.HostKeyCallback, err = knownhosts.New(other); err != nil {
		t.Fatal(err)
	}
	err = registerOnce(t, cfg)
	if !errors.As(err, &ke) || len(ke.Want) != 0 {
		t.Fatalf("got %v, want a knownhosts.KeyError for an unknown host", err)
	}
	if n := h.srv.Agents(); n != 0 {
		t.Fatalf("%d agents registered", n)
	}
}

func TestSSHUnknownKeyRefused(t *testing.T) {
	h := newHarness(t, nil)
	h.startSSH()
	cfg := h.agentConfig("node-a")
	cfg.SSH.Signer = newSSHKey(t)
	err := registerOnce(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("got %v, want an authentication failure", err)
	}
	if n := h.srv.Agents(); n != 0 {
		t.Fatalf("%d agents registered", n)
	}
}

func TestSSHPrincipalNotHeldRefused(t *testing.T) {
	h := newHarness(t, nil)
	h.startSSH()
	cfg := h.agentConfig("node-a") // node-a's key: principals="node-a"
	cfg.NodeName, cfg.NodeIPs = "node-b", nil
	err := registerOnce(t, cfg)
	var rej *RejectedError
	if !errors.As(err, &rej) || !strings.Contains(rej.Reason, `does not prove node name "node-b"`) {
		t.Fatalf("got %v, want a rejection for node-b", err)
	}
}

// sshCA signs user and host certificates for a test.
type sshCA struct {
	t      *testing.T
	signer ssh.Signer
}

func (ca sshCA) sign(key ssh.PublicKey, typ uint32, principals []string, after, before time.Time, ext map[string]string) *ssh.Certificate {
	c := &ssh.Certificate{Key: key, CertType: typ, KeyId: "test", Serial: 7, ValidPrincipals: principals,
		ValidAfter: uint64(after.Unix()), ValidBefore: uint64(before.Unix()),
		Permissions: ssh.Permissions{Extensions: ext}}
	if err := c.SignCert(rand.Reader, ca.signer); err != nil {
		ca.t.Fatal(err)
	}
	return c
}

func certSigner(t *testing.T, c *ssh.Certificate, key ssh.Signer) ssh.Signer {
	s, err := ssh.NewCertSigner(c, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSSHCertificates runs agents with user certificates against a server
// that trusts their CA and presents a host certificate its agents trust
// through an @cert-authority line.
func TestSSHCertificates(t *testing.T) {
	h := newHarness(t, nil)
	userCA := sshCA{t, newSSHKey(t)}
	hostCA := sshCA{t, newSSHKey(t)}
	now := time.Now()
	hostKey := newSSHKey(t)
	hostCert := hostCA.sign(hostKey.PublicKey(), ssh.HostCert, []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour), nil)
	ln := listenTCP(t, "127.0.0.1:0")
	cfg := SSHServerConfig{HostKeys: []ssh.Signer{certSigner(t, hostCert, hostKey)}, UserCAs: []ssh.PublicKey{userCA.signer.PublicKey()}}
	h.goServe(func() error { return h.srv.ServeSSHAgents(ln, cfg) })
	known := writeKnownHosts(t, t.TempDir(), ln.Addr().String(), hostCA.signer.PublicKey(), true)
	cb, err := knownhosts.New(known)
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]string{certs.SSHNodeIPsExtension: "127.0.0.1"}
	agent := func(principals []string, after, before time.Time, typ uint32, signer sshCA) AgentConfig {
		key := newSSHKey(t)
		c := h.agentConfig("node-a")
		c.ServerAddress, c.TLS = ln.Addr().String(), nil
		c.SSH = &AgentSSHConfig{HostKeyCallback: cb,
			Signer: certSigner(t, signer.sign(key.PublicKey(), typ, principals, after, before, ips), key)}
		return c
	}
	valid := func(p ...string) AgentConfig {
		return agent(p, now.Add(-time.Minute), now.Add(time.Hour), ssh.UserCert, userCA)
	}

	for _, tc := range []struct {
		name string
		cfg  AgentConfig
		want string // "" registers
	}{
		{"system:node principal", valid("system:node:node-a"), ""},
		{"bare principal", valid("other", "NODE-A"), ""},
		{"principal not held", valid("system:node:node-b"), `does not prove node name "node-a"`},
		{"no principals", valid(), "unable to authenticate"},
		{"expired", agent([]string{"node-a"}, now.Add(-2*time.Hour), now.Add(-time.Hour), ssh.UserCert, userCA), "unable to authenticate"},
		{"not yet valid", agent([]string{"node-a"}, now.Add(time.Hour), now.Add(2*time.Hour), ssh.UserCert, userCA), "unable to authenticate"},
		{"host certificate", agent([]string{"node-a"}, now.Add(-time.Minute), now.Add(time.Hour), ssh.HostCert, userCA), "unable to authenticate"},
		{"unknown CA", agent([]string{"node-a"}, now.Add(-time.Minute), now.Add(time.Hour), ssh.UserCert, sshCA{t, newSSHKey(t)}), "unable to authenticate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := registerOnce(t, tc.cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("did not register: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestSSHRejectsUnexpectedChannels opens what an agent must not: a channel
// of an unknown type, a second control channel, and a global request other
// than a ping.
func TestSSHRejectsUnexpectedChannels(t *testing.T) {
	h := newHarness(t, nil)
	h.startSSH()
	cfg := h.agentConfig("node-a")
	sess, err := dialSSH(context.Background(), h.ssh.addr, cfg.SSH, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	conn := sess.(*sshSession).conn
	if _, _, err := conn.OpenChannel("session", nil); !isReject(err, ssh.UnknownChannelType) {
		t.Errorf("session channel: %v, want unknown channel type", err)
	}
	if _, _, err := conn.OpenChannel(sshDialChannel, nil); !isReject(err, ssh.UnknownChannelType) {
		t.Errorf("dial channel from the agent: %v, want unknown channel type", err)
	}
	ctrl, err := sess.Open(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	if _, _, err := conn.OpenChannel(sshControlChannel, nil); !isReject(err, ssh.Prohibited) {
		t.Errorf("second control channel: %v, want prohibited", err)
	}
	if ok, _, err := conn.SendRequest("tcpip-forward", true, nil); ok || err != nil {
		t.Errorf("tcpip-forward request: ok=%v err=%v, want refused", ok, err)
	}
	if rtt, err := sess.Ping(context.Background()); err != nil || rtt <= 0 {
		t.Errorf("ping: %v %v", rtt, err)
	}
}

func isReject(err error, reason ssh.RejectionReason) bool {
	var oe *ssh.OpenChannelError
	return errors.As(err, &oe) && oe.Reason == reason
}

// TestSSHStreamDeadlines pins down the deadline semantics of sshStream: a
// read past its deadline returns os.ErrDeadlineExceeded, a cleared
// deadline never fires, and half-close leaves the other direction open.
func TestSSHStreamDeadlines(t *testing.T) {
	checkLeaks(t)
	srv, agent := sshPair(t)
	a, err := agent.Open(context.Background(), nil) // the control channel
	if err != nil {
		t.Fatal(err)
	}
	b, err := srv.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()

	b.SetReadDeadline(time.Now().Add(time.Hour))
	b.SetReadDeadline(time.Time{}) // cleared: must not fire
	if _, err := a.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q %v", buf, err)
	}
	a.(*sshStream).CloseWrite() // half-close a→b; b→a still flows
	if _, err := b.Read(buf); err != io.EOF {
		t.Fatalf("after CloseWrite: %v, want EOF", err)
	}
	if _, err := b.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("read back %q %v", buf, err)
	}
	start := time.Now()
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = a.Read(buf)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("deadline fired after %s", took)
	}
}

// sshPair returns both ends of an SSH session over loopback TCP.
func sshPair(t *testing.T) (srv, agent Session) {
	hostKey, agentKey := newSSHKey(t), newSSHKey(t)
	cfg := SSHServerConfig{HostKeys: []ssh.Signer{hostKey},
		AuthorizedKeys: []certs.SSHAuthorizedKey{{Key: agentKey.PublicKey(), Nodes: []string{"node-a"}}}}
	ln := listenTCP(t, "127.0.0.1:0")
	accepted := make(chan Session, 1)
	go func() {
		defer close(accepted)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s, err := acceptSSH(context.Background(), c, cfg.serverConfig())
		if err != nil {
			t.Error(err)
			c.Close()
			return
		}
		accepted <- s
	}()
	known := writeKnownHosts(t, t.TempDir(), ln.Addr().String(), hostKey.PublicKey(), false)
	cb, err := knownhosts.New(known)
	if err != nil {
		t.Fatal(err)
	}
	agent, err = dialSSH(context.Background(), ln.Addr().String(), &AgentSSHConfig{Signer: agentKey, HostKeyCallback: cb}, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	srv = <-accepted
	if srv == nil {
		t.Fatal("server side of the SSH pair failed")
	}
	if got := srv.Peer(); got.Transport != TransportSSH || !got.provesNode("node-a") {
		t.Fatalf("server sees peer %+v", got)
	}
	t.Cleanup(func() { agent.Close(); srv.Close() })
	return srv, agent
}

// TestSSHServerConfigValidate covers the SSH listener's configuration
// errors.
func TestSSHServerConfigValidate(t *testing.T) {
	key := newSSHKey(t)
	for _, tc := range []struct {
		cfg  SSHServerConfig
		want string
	}{
		{SSHServerConfig{}, "host key"},
		{SSHServerConfig{HostKeys: []ssh.Signer{key}}, "authorized keys or a user CA"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
	ok := SSHServerConfig{HostKeys: []ssh.Signer{key}, UserCAs: []ssh.PublicKey{key.PublicKey()}}
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
}

// TestSSHKeyFiles loads the files the commands read: an OpenSSH private
// key with a certificate beside it, authorized_keys with principals and
// node IPs, and CA public keys.
func TestSSHKeyFiles(t *testing.T) {
	dir := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "agent")
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "id_ed25519")
	writeFile(t, keyPath, string(pem.EncodeToMemory(block)))
	signer, err := certs.LoadSSHSigner(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, isCert := signer.PublicKey().(*ssh.Certificate); isCert {
		t.Fatal("no certificate beside the key, yet a certificate signer")
	}
	ca := sshCA{t, newSSHKey(t)}
	now := time.Now()
	cert := ca.sign(signer.PublicKey(), ssh.UserCert, []string{"node-a"}, now, now.Add(time.Hour), nil)
	writeFile(t, keyPath+"-cert.pub", string(ssh.MarshalAuthorizedKey(cert)))
	if signer, err = certs.LoadSSHSigner(keyPath); err != nil {
		t.Fatal(err)
	}
	if _, isCert := signer.PublicKey().(*ssh.Certificate); !isCert {
		t.Fatal("certificate beside the key not used")
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ca.signer.PublicKey())))
	ak := "# agents\n" + `principals="system:node:Node-A,node-a2",node-ips="10.0.0.5,::ffff:10.0.0.6" ` + pub + " node-a\n"
	writeFile(t, filepath.Join(dir, "authorized_keys"), ak)
	keys, err := certs.LoadSSHAuthorizedKeys(filepath.Join(dir, "authorized_keys"))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || strings.Join(keys[0].Nodes, ",") != "node-a,node-a2" || len(keys[0].IPs) != 2 || keys[0].IPs[1].String() != "10.0.0.6" {
		t.Fatalf("parsed %+v", keys)
	}
	writeFile(t, filepath.Join(dir, "bad"), pub+"\n")
	if _, err := certs.LoadSSHAuthorizedKeys(filepath.Join(dir, "bad")); err == nil || !strings.Contains(err.Error(), "principals") {
		t.Fatalf("a key without principals: %v", err)
	}
	writeFile(t, filepath.Join(dir, "ca.pub"), "cert-authority "+pub+"\n")
	if cas, err := certs.LoadSSHPublicKeys(filepath.Join(dir, "ca.pub")); err != nil || len(cas) != 1 {
		t.Fatalf("CA keys: %v %v", cas, err)
	}
}

func writeFile(t *testing.T, path, data string) {
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
