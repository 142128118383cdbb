// Package sshdtest runs a real OpenSSH sshd (Debian's openssh-server,
// installed by .ci/run) for the SSH fallback's tests and benchmarks: on a
// private address and a port nothing else uses, with its own host key,
// configuration and authorized_keys in a directory the caller owns — never
// the system's sshd, never port 22.
package sshdtest

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Path is where Debian's openssh-server installs sshd.
const Path = "/usr/sbin/sshd"

// StartTimeout bounds the wait for sshd to log that it listens.
const StartTimeout = 10 * time.Second

// Unavailable returns why sshd cannot run here, or "" if it can: it must
// be installed, and privilege separation needs root.
func Unavailable() string {
	if _, err := os.Stat(Path); err != nil {
		return "no " + Path + " (apt-get install openssh-server)"
	}
	if os.Geteuid() != 0 {
		return "sshd needs root"
	}
	return ""
}

// Server is a running sshd and what a client needs to use it.
type Server struct {
	IP      netip.Addr
	Port    uint16
	User    string        // the login name authorized_keys admits
	HostKey ssh.PublicKey // its host key, for known_hosts
	Client  ssh.Signer    // a key its authorized_keys holds

	cmd     *exec.Cmd
	logDone chan struct{} // closed when the log reader ends
	once    sync.Once
}

// Addr is sshd's host:port.
func (s *Server) Addr() string {
	return net.JoinHostPort(s.IP.String(), strconv.Itoa(int(s.Port)))
}

// Start writes a host key, a client key, authorized_keys and sshd_config
// into dir (created if missing) and runs sshd on ip (a port the kernel picks) until Close. Each
// line sshd logs goes to logf (nil: discarded), never after Close returns.
func Start(dir, ip string, logf func(string)) (*Server, error) {
	if why := Unavailable(); why != "" {
		return nil, errors.New("sshdtest: " + why)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation directory
		return nil, err
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, err
	}
	s := &Server{IP: addr, User: u.Username}
	confPath, err := s.writeFiles(dir)
	if err != nil {
		return nil, err
	}
	return s, s.run(confPath, logf)
}

// writeFiles writes the keys and configuration and returns the
// configuration's path.
func (s *Server) writeFiles(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	hostKeyPath := filepath.Join(dir, "ssh_host_ed25519_key")
	hostKey, err := writeKey(hostKeyPath)
	if err != nil {
		return "", err
	}
	s.HostKey = hostKey.PublicKey()
	if s.Client, err = NewKey(); err != nil {
		return "", err
	}
	authKeys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authKeys, ssh.MarshalAuthorizedKey(s.Client.PublicKey()), 0o600); err != nil {
		return "", err
	}
	if s.Port, err = freePort(s.IP.String()); err != nil {
		return "", err
	}
	conf := fmt.Sprintf(`ListenAddress %s
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
`, s.Addr(), hostKeyPath, authKeys, s.User)
	confPath := filepath.Join(dir, "sshd_config")
	return confPath, os.WriteFile(confPath, []byte(conf), 0o600)
}

// run starts sshd in the foreground and waits until it listens.
func (s *Server) run(confPath string, logf func(string)) error {
	s.cmd = exec.Command(Path, "-D", "-e", "-f", confPath)
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	ready := make(chan struct{})
	s.logDone = make(chan struct{})
	go s.readLog(bufio.NewScanner(stderr), ready, logf)
	select {
	case <-ready:
		return nil
	case <-s.logDone:
		s.Close()
		return errors.New("sshdtest: sshd exited before listening")
	case <-time.After(StartTimeout):
		s.Close()
		return errors.New("sshdtest: sshd did not start listening")
	}
}

// readLog passes sshd's lines to logf and closes ready at "Server
// listening on". It ends when Close's Wait closes the pipe.
func (s *Server) readLog(sc *bufio.Scanner, ready chan struct{}, logf func(string)) {
	defer close(s.logDone)
	var once sync.Once
	for sc.Scan() {
		if logf != nil {
			logf("sshd: " + sc.Text())
		}
		if strings.Contains(sc.Text(), "Server listening on") {
			once.Do(func() { close(ready) })
		}
	}
}

// Close kills the listening sshd and waits for it and its log reader.
// Per-connection sshd processes end when their clients disconnect.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		<-s.logDone
	})
	return nil
}

// NewKey returns a fresh ed25519 key.
func NewKey() (ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return ssh.NewSignerFromKey(priv)
}

// writeKey writes a fresh ed25519 key to path in OpenSSH's format.
func writeKey(path string) (ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return ssh.NewSignerFromKey(priv)
}

// freePort returns a port nothing listens on at ip now, for sshd, which
// cannot be handed a listener.
func freePort(ip string) (uint16, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port), nil
}
