package tunnel

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// Tests that play a hostile node against the server's TLS checks
// (README "Threat model").

// selfSignedNode returns a key pair that claims node by its CN and IP SANs
// but is signed by nobody the server trusts.
func selfSignedNode(t *testing.T, cn string, dns []string, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A server whose AgentTLS hands out, per client, a configuration that
// verifies nothing still admits only verified certificates: identity is
// read from the verified chain alone.
func TestAgentTLSVerifiedEvenWithGetConfigForClient(t *testing.T) {
	h := newHarness(t, func(c *ServerConfig) {
		base := c.AgentTLS.Clone()
		c.AgentTLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			lax := base.Clone()
			lax.ClientAuth = tls.RequireAnyClientCert // a careless caller's choice
			return lax, nil
		}
	})
	cfg := h.agentConfig("node-a")
	forge := selfSignedNode(t, "system:node:node-a", nil, net.IPv4(127, 0, 0, 1))
	cfg.TLS.Certificates = nil // sent whatever CAs the server asks for
	cfg.TLS.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &forge, nil }
	if err := registerOnce(t, cfg); err == nil {
		t.Fatal("a self-signed node certificate registered")
	} else if !strings.Contains(err.Error(), "signed by a CA other than the server's --agent-ca-file") {
		t.Errorf("the refused agent's error does not name the likely cause: %v", err)
	}
	if h.srv.Agents() != 0 {
		t.Fatalf("%d agents registered", h.srv.Agents())
	}
	if err := registerOnce(t, h.agentConfig("node-a")); err != nil {
		t.Fatalf("a node certificate of the agent CA: %v", err)
	}
}

// The TCP frontend refuses every certificate the agent port would take as
// proof of a node, in whatever form it proves it, unless the operator
// names the client.
func TestFrontendRefusesEveryNodeCredential(t *testing.T) {
	leaf := func(cn string, dns ...string) *x509.Certificate {
		c, err := x509.ParseCertificate(selfSignedNode(t, cn, dns).Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name  string
		cert  *x509.Certificate
		names []string
		ok    bool
	}{
		{"node CN", leaf("system:node:w1"), nil, false},
		{"node CN in other case", leaf("System:NODE:w1"), nil, false},
		{"node by DNS SAN only", leaf("w1-agent", "w1"), nil, false},
		{"node by DNS SAN, other CN allowed", leaf("w1-agent", "w1"), []string{"kube-apiserver"}, false},
		{"node certificate named by the operator", leaf("w1-agent", "w1"), []string{"w1-agent"}, true},
		{"plain client", leaf("kube-apiserver"), nil, true},
		{"plain client named", leaf("kube-apiserver"), []string{"kube-apiserver"}, true},
		{"plain client not named", leaf("someone"), []string{"kube-apiserver"}, false},
		{"wildcard SAN proves no node", leaf("kube-apiserver", "*.nodes"), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := FrontendClientPolicy(tt.names)(tls.ConnectionState{PeerCertificates: []*x509.Certificate{tt.cert}})
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok = %v", err, tt.ok)
			}
		})
	}
}
