package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"time"
)

// Subject fields of generated certificates.
const (
	caName     = "tunnel-ca"
	serverName = "tunnel-server"
	// nodesGroup is the Kubernetes group of kubelet client certificates.
	nodesGroup = "system:nodes"
)

// File modes of generated files: keys are private to their owner.
const (
	keyMode  os.FileMode = 0o600
	certMode os.FileMode = 0o644
)

// clockSkew backdates NotBefore so a peer whose clock runs a little behind
// still accepts a certificate generated just now.
const clockSkew = time.Hour

// serialBits is the size of random serial numbers (RFC 5280 allows 159).
const serialBits = 128

// issued is a certificate and its key.
type issued struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// leaf is a certificate to issue and where to write it.
type leaf struct {
	tmpl              *x509.Certificate
	certPath, keyPath string
}

// write creates the CA and every leaf in files, removing what it wrote if
// anything fails.
func (o Options) write(files Files, now time.Time) (err error) {
	var w writer
	defer func() {
		if err != nil {
			w.undo()
		}
	}()
	ca, err := selfSign(caTemplate(now, o.Validity))
	if err != nil {
		return err
	}
	if err := w.pair(files.CACert, files.CAKey, ca); err != nil {
		return err
	}
	for _, l := range o.leaves(files, now) {
		kp, err := ca.sign(l.tmpl)
		if err != nil {
			return err
		}
		if err := w.pair(l.certPath, l.keyPath, kp); err != nil {
			return err
		}
	}
	return nil
}

// leaves returns the server, frontend client and agent certificates to issue.
func (o Options) leaves(files Files, now time.Time) []leaf {
	server := leafTemplate(serverName, x509.ExtKeyUsageServerAuth, now, o.Validity)
	server.DNSNames = o.ServerNames
	server.IPAddresses = netIPs(o.ServerIPs)
	client := leafTemplate(o.ClientName, x509.ExtKeyUsageClientAuth, now, o.Validity)
	out := []leaf{
		{server, files.ServerCert, files.ServerKey},
		{client, files.ClientCert, files.ClientKey},
	}
	for _, n := range o.Nodes {
		paths := files.Agents[n.Name]
		out = append(out, leaf{agentTemplate(n, now, o.Validity), paths[0], paths[1]})
	}
	return out
}

// agentTemplate is the agent certificate of node n, the kubelet's shape:
// Subject CN "system:node:NAME", O "system:nodes", DNS SAN NAME, IP SANs
// the node's IPs.
func agentTemplate(n Node, now time.Time, validity time.Duration) *x509.Certificate {
	agent := leafTemplate(NodePrefix+n.Name, x509.ExtKeyUsageClientAuth, now, validity)
	agent.Subject.Organization = []string{nodesGroup}
	agent.DNSNames = []string{n.Name}
	agent.IPAddresses = netIPs(n.IPs)
	return agent
}

// caTemplate is a CA that may sign leaves but no further CAs.
func caTemplate(now time.Time, validity time.Duration) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: caName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
}

// leafTemplate is an end-entity certificate for one extended key usage.
func leafTemplate(cn string, usage x509.ExtKeyUsage, now time.Time, validity time.Duration) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
	}
}

// selfSign issues tmpl signed by a fresh key of its own.
func selfSign(tmpl *x509.Certificate) (issued, error) {
	return create(tmpl, nil, nil)
}

// sign issues tmpl under a fresh key, signed by ca.
func (ca issued) sign(tmpl *x509.Certificate) (issued, error) {
	return create(tmpl, ca.cert, ca.key)
}

// create generates a P-256 key and a certificate for it from tmpl, signed by
// parentKey, or self-signed when parent is nil.
func create(tmpl, parent *x509.Certificate, parentKey crypto.Signer) (issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return issued{}, fmt.Errorf("certs: generate key: %w", err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return issued{}, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return issued{}, fmt.Errorf("certs: create certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return issued{}, fmt.Errorf("certs: parse certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	return issued{cert: cert, key: key}, nil
}

// newSerial returns a random positive serial number of serialBits bits.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), serialBits))
	if err != nil {
		return nil, fmt.Errorf("certs: generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// netIPs converts addresses to the form x509 templates take.
func netIPs(addrs []netip.Addr) []net.IP {
	ips := make([]net.IP, 0, len(addrs))
	for _, a := range addrs {
		ips = append(ips, net.IP(a.Unmap().AsSlice()))
	}
	return ips
}

// writer creates files that must not exist yet and remembers them, so a
// failed Generate can take them back.
type writer struct {
	written []string
}

// pair writes a certificate (0644) and its PKCS #8 key (0600).
func (w *writer) pair(certPath, keyPath string, kp issued) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(kp.key)
	if err != nil {
		return fmt.Errorf("certs: encode key %s: %w", keyPath, err)
	}
	if err := w.file(keyPath, keyMode, &pem.Block{Type: pemPKCS8, Bytes: keyDER}); err != nil {
		return err
	}
	return w.file(certPath, certMode, &pem.Block{Type: pemCertificate, Bytes: kp.cert.Raw})
}

// file creates path with exactly mode, whatever the umask, and writes b.
func (w *writer) file(path string, mode os.FileMode, b *pem.Block) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	w.written = append(w.written, path)
	err = errors.Join(f.Chmod(mode), pem.Encode(f, b), f.Sync(), f.Close())
	if err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	return nil
}

// undo removes every file w wrote.
func (w *writer) undo() {
	for _, p := range w.written {
		os.Remove(p)
	}
}
