package tunnel

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/tunnel-project/tunnel/internal/sshdtest"
)

// The SSH fallback against a real OpenSSH server: sshd (Debian's
// openssh-server, installed by .ci/run) started by the test on a private
// loopback address and port, with its own host key, configuration and
// authorized_keys — no system sshd, no port 22.

// startSSHD runs sshd on ip until the test ends. It needs root (sshd's
// privilege separation) and skips the test without sshd or root.
func startSSHD(t *testing.T, ip string) *realSSHD {
	t.Helper()
	if why := sshdtest.Unavailable(); why != "" {
		t.Skip(why)
	}
	d, err := sshdtest.Start(t.TempDir(), ip, func(line string) { t.Log(line) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return &realSSHD{d}
}

// realSSHD is a running sshd and what a client needs to use it.
type realSSHD struct{ *sshdtest.Server }

// fallbackConfig is a fallback to d whose known_hosts holds hostKey.
func (d *realSSHD) fallbackConfig(t *testing.T, hostKey ssh.PublicKey) SSHFallbackConfig {
	cb, err := knownhosts.New(writeKnownHosts(t, t.TempDir(), d.Addr(), hostKey, false))
	if err != nil {
		t.Fatal(err)
	}
	return SSHFallbackConfig{CIDRs: []netip.Prefix{netip.PrefixFrom(d.IP, 32)}, User: d.User, Signer: d.Client,
		HostKeyCallback: cb, Port: d.Port, MinBackoff: time.Second, MaxBackoff: 2 * time.Second}
}

func TestSSHFallbackThroughOpenSSH(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *ServerConfig) { c.Registerer = reg })
	d := startSSHD(t, "127.0.0.2") // node-b's address; node-b has no agent yet
	if err := h.srv.EnableSSHFallback(d.fallbackConfig(t, d.HostKey)); err != nil {
		t.Fatal(err)
	}
	echo := startEcho(t, "127.0.0.2:0")
	for i := range 3 { // one SSH connection carries them all
		if err := echoCheck(h.mustConnect(echo), 256<<10); err != nil {
			t.Fatalf("tunnel %d: %v", i, err)
		}
	}
	if n := h.srv.fallback.Load().connections(); n != 1 {
		t.Fatalf("%d connections to the node's sshd, want 1", n)
	}
	expectMetric(t, reg, eq(1), "tunnel_server_agents_connected", "transport", TransportSSHFallback)

	t.Run("half-close", func(t *testing.T) {
		c := h.mustConnect(echo)
		io.WriteString(c, "last words")
		c.(*net.UnixConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "last words" {
			t.Fatalf("read %q, %v", got, err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		closed := listenTCP(t, "127.0.0.2:0")
		addr := closed.Addr().String()
		closed.Close()
		_, res := h.connect(addr)
		if want := "502 dial " + addr + ": connection refused"; res.Status != want {
			t.Fatalf("status %q, want %q", res.Status, want)
		}
	})
	t.Run("outside the fallback's ranges", func(t *testing.T) {
		_, res := h.connect("127.0.0.9:80")
		if res.StatusCode != http.StatusBadGateway || !strings.Contains(res.Status, "no agent") {
			t.Fatalf("status %q", res.Status)
		}
	})
	t.Run("an agent wins over the fallback", func(t *testing.T) {
		var log dialLog
		b := h.agentConfig("node-b")
		b.Dial = recordingDial("agent", &log)
		agent := h.startAgent(b)
		if err := echoCheck(h.mustConnect(echo), 64); err != nil {
			t.Fatal(err)
		}
		if got := log.get(); got != "agent "+echo {
			t.Fatalf("dial went %q, want through the agent", got)
		}
		agent.stop()
		waitFor(t, "agent gone", func() bool { return h.srv.Agents() == 0 })
		if err := echoCheck(h.mustConnect(echo), 64); err != nil { // back to the fallback
			t.Fatal(err)
		}
	})
}

func TestSSHFallbackWrongHostKeyRefused(t *testing.T) {
	h := newHarness(t, nil)
	d := startSSHD(t, "127.0.0.2")
	if err := h.srv.EnableSSHFallback(d.fallbackConfig(t, newSSHKey(t).PublicKey())); err != nil {
		t.Fatal(err)
	}
	echo := startEcho(t, "127.0.0.2:0")
	_, res := h.connect(echo)
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(res.Status, "key mismatch") {
		t.Fatalf("status %q, want 502 with a host key mismatch", res.Status)
	}
	start := time.Now()
	_, res = h.connect(echo) // within the backoff: the same error at once
	if !strings.Contains(res.Status, "key mismatch") || !strings.Contains(res.Status, "next attempt in") {
		t.Fatalf("status %q during the backoff", res.Status)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("dial during the backoff took %s", took)
	}
	if n := h.srv.fallback.Load().connections(); n != 0 {
		t.Fatalf("%d connections to an sshd with the wrong host key", n)
	}
}

// TestSSHFallbackConfigValidate covers the fallback's configuration errors.
func TestSSHFallbackConfigValidate(t *testing.T) {
	key := newSSHKey(t)
	cb := ssh.FixedHostKey(key.PublicKey())
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
	for _, tc := range []struct {
		cfg  SSHFallbackConfig
		want string
	}{
		{SSHFallbackConfig{}, "node range"},
		{SSHFallbackConfig{CIDRs: cidrs}, "User"},
		{SSHFallbackConfig{CIDRs: cidrs, User: "root"}, "private key"},
		{SSHFallbackConfig{CIDRs: cidrs, User: "root", Signer: key}, "known_hosts"},
		{SSHFallbackConfig{CIDRs: cidrs, User: "root", Signer: key, HostKeyCallback: cb, MinBackoff: 2, MaxBackoff: 1}, "MaxBackoff"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v, want %q", err, tc.want)
		}
	}
}
