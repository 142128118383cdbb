package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testNodes are the agents the generated fixture holds.
var testNodes = []Node{
	{Name: "node-a", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}},
	{Name: "node-b.example", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}},
	{Name: "node-c"},
}

// fixture is a generated directory, loaded back.
type fixture struct {
	files  Files
	pool   *x509.CertPool
	server tls.Certificate
	client tls.Certificate
	agents map[string]tls.Certificate
}

// generate runs Generate with testNodes into a fresh directory and loads
// everything back with LoadPool and LoadKeyPair.
func generate(t *testing.T) fixture {
	t.Helper()
	files, err := Generate(Options{Dir: filepath.Join(t.TempDir(), "pki"), Nodes: testNodes})
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	fx := fixture{files: files, agents: map[string]tls.Certificate{}}
	if fx.pool, err = LoadPool(files.CACert); err != nil {
		t.Fatalf("LoadPool: %v", err)
	}
	fx.server = loadPair(t, files.ServerCert, files.ServerKey)
	fx.client = loadPair(t, files.ClientCert, files.ClientKey)
	for name, paths := range files.Agents {
		fx.agents[name] = loadPair(t, paths[0], paths[1])
	}
	return fx
}

func loadPair(t *testing.T, certFile, keyFile string) tls.Certificate {
	t.Helper()
	c, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("LoadKeyPair: %v", err)
	}
	if c.Leaf == nil {
		t.Fatalf("LoadKeyPair(%s): Leaf not set", certFile)
	}
	return c
}

func TestGenerateVerify(t *testing.T) {
	fx := generate(t)
	tests := []struct {
		name    string
		cert    tls.Certificate
		usage   x509.ExtKeyUsage
		dnsName string
		ok      bool
	}{
		{"server as server", fx.server, x509.ExtKeyUsageServerAuth, "localhost", true},
		{"server by IP", fx.server, x509.ExtKeyUsageServerAuth, "::1", true},
		{"server wrong name", fx.server, x509.ExtKeyUsageServerAuth, "tunnel.example", false},
		{"server as client", fx.server, x509.ExtKeyUsageClientAuth, "", false},
		{"frontend client", fx.client, x509.ExtKeyUsageClientAuth, "", true},
		{"frontend as server", fx.client, x509.ExtKeyUsageServerAuth, "", false},
		{"agent node-a", fx.agents["node-a"], x509.ExtKeyUsageClientAuth, "", true},
		{"agent node-b", fx.agents["node-b.example"], x509.ExtKeyUsageClientAuth, "", true},
		{"agent node-c", fx.agents["node-c"], x509.ExtKeyUsageClientAuth, "", true},
		{"agent as server", fx.agents["node-a"], x509.ExtKeyUsageServerAuth, "node-a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cert.Leaf.Verify(x509.VerifyOptions{
				DNSName:   tt.dnsName,
				Roots:     fx.pool,
				KeyUsages: []x509.ExtKeyUsage{tt.usage},
			})
			if (err == nil) != tt.ok {
				t.Errorf("Verify = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestGenerateCertificateShapes(t *testing.T) {
	fx := generate(t)
	a := fx.agents["node-a"].Leaf
	if a.Subject.CommonName != "system:node:node-a" || !slices.Equal(a.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("agent subject = %v", a.Subject)
	}
	if !slices.Equal(a.DNSNames, []string{"node-a"}) || len(a.IPAddresses) != 2 {
		t.Errorf("agent SANs = %v %v", a.DNSNames, a.IPAddresses)
	}
	if got := fx.client.Leaf.Subject.CommonName; got != "kube-apiserver" {
		t.Errorf("client CN = %q, want kube-apiserver", got)
	}
	s := fx.server.Leaf
	if !slices.Equal(s.DNSNames, []string{"localhost"}) || len(s.IPAddresses) != 2 {
		t.Errorf("server SANs = %v %v, want localhost, 127.0.0.1, ::1", s.DNSNames, s.IPAddresses)
	}
	if d := s.NotAfter.Sub(s.NotBefore); d < 365*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("server valid for %v, want about 365 days", d)
	}
	for name, c := range map[string]*x509.Certificate{"server": s, "agent": a} {
		k, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s key is %T, want ECDSA P-256", name, c.PublicKey)
		}
	}
}

func TestGenerateFileModes(t *testing.T) {
	fx := generate(t)
	f := fx.files
	want := map[string]os.FileMode{
		f.CACert: 0o644, f.CAKey: 0o600, f.ServerCert: 0o644, f.ServerKey: 0o600,
		f.ClientCert: 0o644, f.ClientKey: 0o600, filepath.Dir(f.CACert): 0o700 | os.ModeDir,
	}
	for _, pair := range f.Agents {
		want[pair[0]], want[pair[1]] = 0o644, 0o600
	}
	for path, mode := range want {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", path, info.Mode(), mode)
		}
	}
	if got := filepath.Base(f.Agents["node-b.example"][1]); got != "agent-node-b.example.key" {
		t.Errorf("agent key file = %s", got)
	}
}

func TestGenerateRejects(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		opts  Options
		field string // of the OptionError
		want  string
	}{
		{"no dir", Options{}, "Dir", "Options.Dir: is empty"},
		{"negative validity", Options{Dir: dir, Validity: -time.Hour}, "Validity", "negative"},
		{"client proves node", Options{Dir: dir, ClientName: "system:node:x"}, "ClientName", "would prove a node"},
		{"path in node name", Options{Dir: dir, Nodes: []Node{{Name: "../etc"}}}, "Nodes", "DNS-1123"},
		{"upper-case node", Options{Dir: dir, Nodes: []Node{{Name: "Node-A"}}}, "Nodes", "DNS-1123"},
		{"empty node", Options{Dir: dir, Nodes: []Node{{}}}, "Nodes", "empty node name"},
		{"duplicate node", Options{Dir: dir, Nodes: []Node{{Name: "a"}, {Name: "a"}}}, "Nodes", "listed twice"},
		{"zero node IP", Options{Dir: dir, Nodes: []Node{{Name: "a", IPs: []netip.Addr{{}}}}}, "Nodes", "invalid"},
		{"zoned server IP", Options{Dir: dir, ServerIPs: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}}, "ServerIPs", "zone"},
		{"empty server name", Options{Dir: dir, ServerNames: []string{""}}, "ServerNames", "empty name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Generate(tt.opts)
			var oe *OptionError
			if err == nil || !strings.HasPrefix(err.Error(), "certs: ") || strings.Count(err.Error(), "certs:") != 1 || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Generate = %v, want error containing %q", err, tt.want)
			}
			if !errors.As(err, &oe) || oe.Field != tt.field {
				t.Errorf("Generate = %#v, want an OptionError for %s", err, tt.field)
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("rejected Generate wrote %d files", len(entries))
	}
}

func TestGenerateRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	nodes := []Node{{Name: "node-a"}}
	if _, err := Generate(Options{Dir: dir, Nodes: nodes}); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Generate(Options{Dir: dir, Nodes: nodes})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Generate = %v, want already exists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	if string(before) != string(after) {
		t.Error("second Generate replaced ca.key")
	}
}

func TestWriterUndo(t *testing.T) {
	dir := t.TempDir()
	first, taken := filepath.Join(dir, "first.key"), filepath.Join(dir, "taken.key")
	if err := os.WriteFile(taken, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var w writer
	block := &pem.Block{Type: "TEST", Bytes: []byte{1}}
	if err := w.file(first, keyMode, block); err != nil {
		t.Fatal(err)
	}
	if err := w.file(taken, keyMode, block); err == nil {
		t.Fatal("writer overwrote an existing file")
	}
	w.undo()
	if _, err := os.Stat(first); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("undo left %s: %v", first, err)
	}
	if _, err := os.Stat(taken); err != nil {
		t.Errorf("undo removed a file it did not write: %v", err)
	}
}
