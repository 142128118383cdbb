package certs

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Defaults Generate applies to zero fields of Options; Options documents them.
const (
	defaultValidity   = 365 * 24 * time.Hour
	defaultClientName = "kube-apiserver"
	defaultServerName = "localhost"
)

// File names Generate writes inside Options.Dir.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
	clientCertFile = "client.crt"
	clientKeyFile  = "client.key"
	agentPrefix    = "agent-"
	certExt        = ".crt"
	keyExt         = ".key"
)

// Options configures Generate. Every field but Dir has a default that
// applies when it is zero.
type Options struct {
	// Dir is the output directory, created with mode 0700 if missing.
	// Required.
	Dir string
	// Nodes lists the agents: one agent certificate per node. May be empty.
	Nodes []Node
	// ServerNames are the DNS SANs of the server certificate, the names
	// agents and the kube-apiserver dial. Default ["localhost"].
	ServerNames []string
	// ServerIPs are the IP SANs of the server certificate. Default
	// 127.0.0.1 and ::1.
	ServerIPs []netip.Addr
	// ClientName is the Subject CN of the frontend client certificate, the
	// one the kube-apiserver presents to a TCP CONNECT listener. It may not
	// start with NodePrefix, or it would prove a node. Default
	// "kube-apiserver".
	ClientName string
	// Validity is how long every certificate stays valid from now; each is
	// also valid from an hour before now, to allow for clock skew. Default
	// 365 days.
	Validity time.Duration
}

// Files lists what Generate wrote: Options.Dir joined with each file name.
type Files struct {
	// CACert and CAKey are ca.crt and ca.key: the bundle both sides trust
	// and the key that signs everything else. Keep CAKey off the nodes.
	CACert, CAKey string
	// ServerCert and ServerKey are server.crt and server.key, for the
	// tunnel-server's agent and frontend listeners.
	ServerCert, ServerKey string
	// ClientCert and ClientKey are client.crt and client.key, for the
	// kube-apiserver's egress selector when the frontend is TCP.
	ClientCert, ClientKey string
	// Agents maps each node name to {cert, key}: agent-NAME.crt and
	// agent-NAME.key.
	Agents map[string][2]string
}

// Generate creates a fresh CA in opts.Dir and, signed by it, a server
// certificate (ExtKeyUsage ServerAuth), a frontend client certificate
// (ClientAuth) and one agent client certificate per node (ClientAuth;
// Subject CN "system:node:NAME", O "system:nodes", DNS SAN NAME, IP SANs the
// node's IPs). Keys are ECDSA P-256, written as PKCS #8 PEM with mode 0600;
// certificates are written with mode 0644.
//
// It refuses node names that are not DNS-1123 subdomains, so they are safe in
// file names, and it never overwrites: if any file it would write exists it
// writes nothing, because replacing a CA silently breaks every certificate
// issued before. If writing fails part way, it removes what it wrote.
func Generate(opts Options) (Files, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return Files{}, err
	}
	files := opts.files()
	if err := checkAbsent(files.all()); err != nil {
		return Files{}, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return Files{}, fmt.Errorf("certs: create output directory: %w", err)
	}
	if err := opts.write(files, time.Now()); err != nil {
		return Files{}, err
	}
	return files, nil
}

// withDefaults returns o with every zero field but Dir set to its default.
func (o Options) withDefaults() Options {
	if len(o.ServerNames) == 0 {
		o.ServerNames = []string{defaultServerName}
	}
	if len(o.ServerIPs) == 0 {
		o.ServerIPs = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
	}
	if o.ClientName == "" {
		o.ClientName = defaultClientName
	}
	if o.Validity == 0 {
		o.Validity = defaultValidity
	}
	return o
}

// OptionError is an Options field Generate cannot work with. Field names
// it, so that a command can name the flag bound to it.
type OptionError struct {
	Field string // "Dir", "Validity", "ClientName", "ServerNames", "ServerIPs", "Nodes"
	Msg   string
}

func (e *OptionError) Error() string { return "certs: Options." + e.Field + ": " + e.Msg }

// validate reports the first thing wrong with defaulted options.
func (o Options) validate() error {
	switch {
	case o.Dir == "":
		return &OptionError{"Dir", "is empty"}
	case o.Validity < 0:
		return &OptionError{"Validity", fmt.Sprintf("is negative (%s)", o.Validity)}
	case strings.HasPrefix(o.ClientName, NodePrefix):
		return &OptionError{"ClientName", fmt.Sprintf("%q starts with %q, so it would prove a node", o.ClientName, NodePrefix)}
	}
	if slices.Contains(o.ServerNames, "") {
		return &OptionError{"ServerNames", "has an empty name"}
	}
	for _, ip := range o.ServerIPs {
		if err := checkSANIP(ip); err != nil {
			return &OptionError{"ServerIPs", err.Error()}
		}
	}
	return validateNodes(o.Nodes)
}

// validateNodes checks each node's name and IPs, and that no name repeats.
func validateNodes(nodes []Node) error {
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		if err := checkNode(n); err != nil {
			return &OptionError{"Nodes", err.Error()}
		}
		if seen[n.Name] {
			return &OptionError{"Nodes", fmt.Sprintf("node %q listed twice", n.Name)}
		}
		seen[n.Name] = true
	}
	return nil
}

// files returns the paths Generate writes for o.
func (o Options) files() Files {
	join := func(name string) string { return filepath.Join(o.Dir, name) }
	f := Files{
		CACert: join(caCertFile), CAKey: join(caKeyFile),
		ServerCert: join(serverCertFile), ServerKey: join(serverKeyFile),
		ClientCert: join(clientCertFile), ClientKey: join(clientKeyFile),
		Agents: make(map[string][2]string, len(o.Nodes)),
	}
	for _, n := range o.Nodes {
		base := agentPrefix + n.Name
		f.Agents[n.Name] = [2]string{join(base + certExt), join(base + keyExt)}
	}
	return f
}

// all returns every path in f.
func (f Files) all() []string {
	paths := []string{f.CACert, f.CAKey, f.ServerCert, f.ServerKey, f.ClientCert, f.ClientKey}
	for _, pair := range f.Agents {
		paths = append(paths, pair[0], pair[1])
	}
	return paths
}

// checkAbsent fails if any of paths exists.
func checkAbsent(paths []string) error {
	for _, p := range paths {
		_, err := os.Lstat(p)
		switch {
		case err == nil:
			return fmt.Errorf("certs: %s: %w; refusing to overwrite key material", p, fs.ErrExist)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("certs: %w", err)
		}
	}
	return nil
}
