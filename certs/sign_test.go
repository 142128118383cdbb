package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestIssueAgents(t *testing.T) {
	fx := generate(t)
	nodes := []Node{
		{Name: "fleet-00001"},
		{Name: "fleet-00002", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.2")}},
	}
	got, err := IssueAgents(fx.files.CACert, fx.files.CAKey, nodes)
	if err != nil {
		t.Fatalf("IssueAgents: %v", err)
	}
	if len(got) != len(nodes) {
		t.Fatalf("IssueAgents returned %d certificates, want %d", len(got), len(nodes))
	}
	ca := loadPair(t, fx.files.CACert, fx.files.CAKey).Leaf
	for i, c := range got {
		n := nodes[i]
		if len(c.Certificate) != 1 {
			t.Errorf("%s: chain of %d certificates under a root CA, want the leaf alone", n.Name, len(c.Certificate))
		}
		opts := x509.VerifyOptions{Roots: fx.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if _, err := c.Leaf.Verify(opts); err != nil {
			t.Errorf("%s: does not verify as a client under the CA: %v", n.Name, err)
		}
		if names := NodeNames(c.Leaf); !slices.Equal(names, []string{n.Name}) {
			t.Errorf("%s: proves nodes %q", n.Name, names)
		}
		for _, ip := range n.IPs {
			if !ProvesIP(c.Leaf, ip) {
				t.Errorf("%s: does not prove %s", n.Name, ip)
			}
		}
		if k, ok := c.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() || !k.PublicKey.Equal(c.Leaf.PublicKey) {
			t.Errorf("%s: key is %T or does not match the certificate, want its ECDSA P-256 key", n.Name, c.PrivateKey)
		}
		if c.Leaf.NotAfter.After(ca.NotAfter) {
			t.Errorf("%s: valid until %s, past the CA (%s)", n.Name, c.Leaf.NotAfter, ca.NotAfter)
		}
	}
}

// TestIssueAgentsHandshake shows an issued certificate completes mutual TLS
// with the server certificate Generate wrote.
func TestIssueAgentsHandshake(t *testing.T) {
	fx := generate(t)
	got, err := IssueAgents(fx.files.CACert, fx.files.CAKey, []Node{{Name: "fleet-00001"}})
	if err != nil {
		t.Fatalf("IssueAgents: %v", err)
	}
	ln := listen(t)
	done := serveOnce(t, ln, fx.server, fx.pool)
	if err := dialAgent(t, ln, got[0], fx.pool); err != nil {
		t.Fatalf("agent handshake: %v", err)
	}
	if res := <-done; res.err != nil {
		t.Fatalf("server handshake: %v", res.err)
	}
}

// TestIssueAgentsIntermediate issues under an intermediate CA: each result
// carries the intermediate, so a server that trusts only the root verifies it.
func TestIssueAgentsIntermediate(t *testing.T) {
	now := time.Now()
	rootTmpl := caTemplate(now, time.Hour)
	rootTmpl.MaxPathLenZero = false
	root, err := selfSign(rootTmpl)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.sign(caTemplate(now, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "inter.crt"), filepath.Join(dir, "inter.key")
	var w writer
	if err := w.pair(certFile, keyFile, inter); err != nil {
		t.Fatal(err)
	}
	got, err := IssueAgents(certFile, keyFile, []Node{{Name: "fleet-00001"}})
	if err != nil {
		t.Fatalf("IssueAgents: %v", err)
	}
	c := got[0]
	if len(c.Certificate) != 2 {
		t.Fatalf("chain of %d certificates, want leaf and intermediate", len(c.Certificate))
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root.cert)
	inters.AddCert(inter.cert)
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := c.Leaf.Verify(opts); err != nil {
		t.Errorf("does not verify under the root: %v", err)
	}
	if !c.Leaf.NotAfter.Equal(inter.cert.NotAfter) {
		t.Errorf("valid until %s, want the intermediate's expiry %s", c.Leaf.NotAfter, inter.cert.NotAfter)
	}
}

func TestIssueAgentsRejects(t *testing.T) {
	fx := generate(t)
	tests := []struct {
		name              string
		certFile, keyFile string
		nodes             []Node
		want              []string
	}{
		{"signer is not a CA", fx.files.ServerCert, fx.files.ServerKey, []Node{{Name: "n"}}, []string{fx.files.ServerCert, "not a CA"}},
		{"key of another certificate", fx.files.CACert, fx.files.ServerKey, []Node{{Name: "n"}}, []string{"does not match"}},
		{"missing CA file", fx.files.CACert + ".missing", fx.files.CAKey, []Node{{Name: "n"}}, []string{".missing"}},
		{"bad node name", fx.files.CACert, fx.files.CAKey, []Node{{Name: "Fleet_1"}}, []string{"Fleet_1", "DNS-1123"}},
		{"zoned IP", fx.files.CACert, fx.files.CAKey, []Node{{Name: "n", IPs: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}}}, []string{`node "n"`, "zone"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := IssueAgents(tt.certFile, tt.keyFile, tt.nodes)
			checkErr(t, err, tt.want...)
		})
	}
}
