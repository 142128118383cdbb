//go:build linux

package kubernetes

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pki is one cluster's key material: the tunnel's quick-start set written
// by `tunnel-server certs` (ca.crt, server, client, agent-NODE), and,
// signed by the same CA, what Kubernetes needs besides: kube-apiserver's
// serving and client certificates, the kubelet's serving certificate, the
// service-account key, the test's admin and the webhook servers'.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  any
	pool   *x509.CertPool
}

// newPKI runs `tunnel-server certs` into dir for node (its certificate
// proving nodeIP) with a server certificate for serverIPs, and loads the CA.
func newPKI(t *testing.T, dir, node string, nodeIP netip.Addr, serverIPs ...netip.Addr) *pki {
	t.Helper()
	argv := []string{bins.tunnelServer, "certs", "--out", dir, "--node", node + "=" + nodeIP.String()}
	for _, ip := range serverIPs {
		argv = append(argv, "--server-ip", ip.String())
	}
	mustRun(t, argv...)
	p := &pki{dir: dir}
	pair, err := tls.LoadX509KeyPair(p.path("ca.crt"), p.path("ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if p.caCert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
		t.Fatal(err)
	}
	p.caKey = pair.PrivateKey
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.caCert)
	return p
}

// path returns a file of the set.
func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// ca is the CA bundle every side trusts.
func (p *pki) ca() string { return p.path("ca.crt") }

// leafSpec is a certificate to issue.
type leafSpec struct {
	cn     string
	orgs   []string
	dns    []string
	ips    []netip.Addr
	server bool // ServerAuth, else ClientAuth
}

// issue writes name.crt and name.key, signed by the CA, and returns the
// two paths.
func (p *pki) issue(t *testing.T, name string, s leafSpec) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: s.cn, Organization: s.orgs},
		NotBefore:    now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:    s.dns,
	}
	if s.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	for _, ip := range s.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = p.path(name+".crt"), p.path(name+".key")
	writePEM(t, certFile, "CERTIFICATE", der, 0o644)
	writeKey(t, keyFile, key)
	return certFile, keyFile
}

// serviceAccountKey writes the key pair kube-apiserver signs (sa.key)
// and verifies (sa.pub) service-account tokens with.
func (p *pki) serviceAccountKey(t *testing.T) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.path("sa.key"), "EC PRIVATE KEY", der, 0o600)
	if der, err = x509.MarshalPKIXPublicKey(&key.PublicKey); err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.path("sa.pub"), "PUBLIC KEY", der, 0o644)
}

// serverTLS returns a TLS config serving the issued certificate name,
// requiring clients with certificates of the CA if clientAuth.
func (p *pki) serverTLS(t *testing.T, name string, clientAuth bool) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(p.path(name+".crt"), p.path(name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if clientAuth {
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, p.pool
	}
	return cfg
}

// clientTLS returns a TLS config presenting the issued certificate name
// and trusting the CA.
func (p *pki) clientTLS(t *testing.T, name string) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(p.path(name+".crt"), p.path(name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: p.pool, MinVersion: tls.VersionTLS12}
}

// caPEM returns the CA certificate in PEM, for caBundle fields.
func (p *pki) caPEM(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(p.ca())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// kubeconfig writes a kubeconfig for server authenticating with the issued
// client certificate name, and returns its path.
func (p *pki) kubeconfig(t *testing.T, name, server string) string {
	t.Helper()
	path := p.path(name + ".kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: test
  context:
    cluster: test
    user: %s
current-context: test
`, server, p.ca(), name, p.path(name+".crt"), p.path(name+".key"), name)
	writeFile(t, path, []byte(cfg), 0o600)
	return path
}

// writeKey writes key as PKCS #8 PEM, mode 0600.
func writeKey(t *testing.T, path string, key *ecdsa.PrivateKey) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "PRIVATE KEY", der, 0o600)
}

func writePEM(t *testing.T, path, kind string, der []byte, mode os.FileMode) {
	t.Helper()
	writeFile(t, path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), mode)
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// base64PEM encodes PEM bytes for a caBundle field in YAML.
func base64PEM(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
