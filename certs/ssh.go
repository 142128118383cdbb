package certs

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
)

// SSH key material for the tunnel's SSH transport. A node's identity comes
// from its key's entry in the server's authorized_keys file, or from the
// principals of an SSH user certificate, as the TLS identity comes from
// the X.509 certificate:
//
//   - authorized_keys: the option principals="NAME[,NAME...]" on the key's
//     line names the nodes the key proves (a line without it proves none
//     and is refused), and node-ips="IP[,IP...]" the node addresses.
//   - user certificate: each of ValidPrincipals, "system:node:NAME" or
//     "NAME", proves node NAME; the extension SSHNodeIPsExtension
//     ("IP[,IP...]", set with ssh-keygen -O extension:node-ips@tunnel-project=IP)
//     the node addresses.

// SSHNodeIPsExtension is the SSH certificate extension, and
// SSHNodeIPsOption the authorized_keys option, that list the node IPs an
// SSH credential proves.
const (
	SSHNodeIPsExtension = "node-ips@tunnel-project"
	SSHNodeIPsOption    = "node-ips"
	sshPrincipalsOption = "principals"
)

// SSHAuthorizedKey is one agent key the server accepts and what it proves.
type SSHAuthorizedKey struct {
	Key   ssh.PublicKey
	Nodes []string     // lower-case node names
	IPs   []netip.Addr // node IPs
}

// SSHNodeNames returns the node names a list of SSH principals proves:
// NAME for "system:node:NAME" or "NAME", lower-cased, without repeats or
// empty names.
func SSHNodeNames(principals []string) []string {
	var names []string
	for _, p := range principals {
		name := strings.ToLower(strings.TrimPrefix(p, NodePrefix))
		if name != "" && !strings.ContainsAny(name, "*?") && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// SSHIPs parses a comma-separated list of IP addresses.
func SSHIPs(list string) ([]netip.Addr, error) {
	var ips []netip.Addr
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, err
		}
		ips = append(ips, ip.Unmap())
	}
	return ips, nil
}

// ParseSSHAuthorizedKeys parses an authorized_keys file for the tunnel
// server: every key line must carry principals="NAME[,NAME...]" and may
// carry node-ips="IP[,IP...]". Comments and blank lines are skipped.
func ParseSSHAuthorizedKeys(data []byte) ([]SSHAuthorizedKey, error) {
	keys, err := parseSSHAuthorizedKeys(data)
	if err != nil {
		return nil, fmt.Errorf("certs: authorized_keys %w", err)
	}
	return keys, nil
}

// parseSSHAuthorizedKeys is ParseSSHAuthorizedKeys with errors that start
// with the line ("line 3: ..."), for a caller to prefix.
func parseSSHAuthorizedKeys(data []byte) ([]SSHAuthorizedKey, error) {
	var out []SSHAuthorizedKey
	for n, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		key, _, opts, _, err := ssh.ParseAuthorizedKey(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		k := SSHAuthorizedKey{Key: key}
		for _, o := range opts {
			name, val, _ := strings.Cut(o, "=")
			val = strings.Trim(val, `"`)
			switch strings.ToLower(name) {
			case sshPrincipalsOption:
				k.Nodes = SSHNodeNames(strings.Split(val, ","))
			case SSHNodeIPsOption:
				if k.IPs, err = SSHIPs(val); err != nil {
					return nil, fmt.Errorf("line %d: %s: %w", n+1, SSHNodeIPsOption, err)
				}
			}
		}
		if len(k.Nodes) == 0 {
			return nil, fmt.Errorf("line %d: no principals=\"NODE\" option: the key would prove no node", n+1)
		}
		out = append(out, k)
	}
	return out, nil
}

// LoadSSHAuthorizedKeys reads and parses an authorized_keys file
// (ParseSSHAuthorizedKeys).
func LoadSSHAuthorizedKeys(path string) ([]SSHAuthorizedKey, error) {
	data, err := readFile(path, whatAuthorizedKeys)
	if err != nil {
		return nil, err
	}
	keys, err := parseSSHAuthorizedKeys(data)
	if err == nil && len(keys) == 0 {
		err = errNoKeys
	}
	if err != nil {
		return nil, &FileError{File: path, What: whatAuthorizedKeys, Err: err}
	}
	return keys, nil
}

// What SSH files hold, as FileError names it.
const (
	whatAuthorizedKeys = "authorized_keys file"
	whatSSHPublicKeys  = "SSH public key file"
	whatSSHKey         = "SSH private key"
	whatSSHCert        = "SSH certificate"
)

var errNoKeys = errors.New("no keys")

// LoadSSHPublicKeys reads public keys in authorized_keys format (a .pub
// file, or lines with options such as cert-authority, which are ignored):
// the CA keys of --ssh-user-ca-file.
func LoadSSHPublicKeys(path string) ([]ssh.PublicKey, error) {
	data, err := readFile(path, whatSSHPublicKeys)
	if err != nil {
		return nil, err
	}
	var keys []ssh.PublicKey
	for rest := data; len(bytes.TrimSpace(rest)) > 0; {
		var key ssh.PublicKey
		if key, _, _, rest, err = ssh.ParseAuthorizedKey(rest); err != nil {
			return nil, &FileError{File: path, What: whatSSHPublicKeys, Err: err}
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, &FileError{File: path, What: whatSSHPublicKeys, Err: errNoKeys}
	}
	return keys, nil
}

// LoadSSHSigner reads an OpenSSH private key (unencrypted). If a
// certificate for it lies beside it as KEY-cert.pub, the signer presents
// that certificate instead of the bare key.
func LoadSSHSigner(path string) (ssh.Signer, error) {
	data, err := readFile(path, whatSSHKey)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, &FileError{File: path, What: whatSSHKey, Err: err}
	}
	certPath := path + "-cert.pub"
	certData, err := os.ReadFile(certPath)
	if errors.Is(err, os.ErrNotExist) {
		return signer, nil
	} else if err != nil {
		return nil, &FileError{File: certPath, What: whatSSHCert, Err: err}
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(certData)
	if err != nil {
		return nil, &FileError{File: certPath, What: whatSSHCert, Err: err}
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, &FileError{File: certPath, What: whatSSHCert, Err: errors.New("not a certificate")}
	}
	cs, err := ssh.NewCertSigner(cert, signer)
	if err != nil {
		return nil, &FileError{File: certPath, What: whatSSHCert, Err: err}
	}
	return cs, nil
}
