package certs

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHOptions says what GenerateSSH writes.
type SSHOptions struct {
	// Dir receives the files; existing ones are never overwritten.
	Dir string
	// Nodes get one agent key each, listed in authorized_keys with
	// principals="NAME" and node-ips="IPs".
	Nodes []Node
	// ServerAddresses are the "host:port" addresses agents dial the SSH
	// listener at; known_hosts names them.
	ServerAddresses []string
}

// SSHFiles are the paths GenerateSSH wrote.
type SSHFiles struct {
	HostKey, KnownHosts, AuthorizedKeys string
	Agents                              map[string]string // node name → private key
}

// GenerateSSH writes quick-start SSH key material for the SSH transport:
// an ed25519 host key for the server, a known_hosts file for agents naming
// it at ServerAddresses, one ed25519 key per node, and the server's
// authorized_keys binding each key to its node. Keys are OpenSSH
// format, private keys mode 0600.
func GenerateSSH(o SSHOptions) (SSHFiles, error) {
	if o.Dir == "" || len(o.ServerAddresses) == 0 {
		return SSHFiles{}, errors.New("certs: GenerateSSH needs a directory and server addresses")
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return SSHFiles{}, fmt.Errorf("certs: create output directory: %w", err)
	}
	files := SSHFiles{
		HostKey:        filepath.Join(o.Dir, "ssh_host_ed25519_key"),
		KnownHosts:     filepath.Join(o.Dir, "known_hosts"),
		AuthorizedKeys: filepath.Join(o.Dir, "authorized_keys"),
		Agents:         make(map[string]string),
	}
	host, err := writeSSHKey(files.HostKey, "tunnel-server")
	if err != nil {
		return files, err
	}
	var patterns []string
	for _, a := range o.ServerAddresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return files, fmt.Errorf("certs: server address %q: %w", a, err)
		}
		patterns = append(patterns, knownhosts.Normalize(a))
	}
	if err := writeNew(files.KnownHosts, knownhosts.Line(patterns, host)+"\n", 0o644); err != nil {
		return files, err
	}
	var ak strings.Builder
	for _, n := range o.Nodes {
		path := filepath.Join(o.Dir, "agent-"+n.Name+"-ssh")
		key, err := writeSSHKey(path, "tunnel-agent "+n.Name)
		if err != nil {
			return files, err
		}
		files.Agents[n.Name] = path
		fmt.Fprintf(&ak, "principals=%q", n.Name)
		if len(n.IPs) > 0 {
			ips := make([]string, len(n.IPs))
			for i, ip := range n.IPs {
				ips[i] = ip.String()
			}
			fmt.Fprintf(&ak, ",%s=%q", SSHNodeIPsOption, strings.Join(ips, ","))
		}
		fmt.Fprintf(&ak, " %s %s\n", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))), n.Name)
	}
	return files, writeNew(files.AuthorizedKeys, ak.String(), 0o644)
}

// writeSSHKey writes a new ed25519 private key at path and its public key
// at path.pub, and returns the public key.
func writeSSHKey(path, comment string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate SSH key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("certs: encode SSH key %s: %w", path, err)
	}
	if err := writeNew(path, string(pem.EncodeToMemory(block)), 0o600); err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("certs: encode SSH key %s: %w", path, err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " " + comment + "\n"
	return sshPub, writeNew(path+".pub", line, 0o644)
}

// writeNew creates path with data, refusing to replace an existing file.
func writeNew(path, data string, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return fmt.Errorf("certs: %w", err)
	}
	return f.Close()
}
