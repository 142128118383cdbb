package certs

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// IssueAgents issues one agent certificate per node under an existing CA,
// in memory, for tools that need many node identities without key files on
// disk, such as a load test that registers thousands of agents. Each has
// the shape Generate writes (ClientAuth; Subject CN "system:node:NAME", O
// "system:nodes", DNS SAN NAME, IP SANs the node's IPs) and a fresh ECDSA
// P-256 key, and is valid from an hour ago for 365 days, but never past the
// CA's own expiry.
//
// caCertFile and caKeyFile hold the CA as LoadKeyPair reads it; the
// certificate must be a CA allowed to sign certificates. When it is an
// intermediate, each result carries the file's chain after its leaf. Node
// names must be DNS-1123 subdomains. The results are in the order of nodes,
// with Leaf set.
func IssueAgents(caCertFile, caKeyFile string, nodes []Node) ([]tls.Certificate, error) {
	ca, err := LoadKeyPair(caCertFile, caKeyFile)
	if err != nil {
		return nil, err
	}
	if err := checkSigner(ca.Leaf, caCertFile); err != nil {
		return nil, err
	}
	var chain [][]byte
	if !selfSigned(ca.Leaf) {
		chain = ca.Certificate
	}
	now := time.Now()
	validity := min(defaultValidity, ca.Leaf.NotAfter.Sub(now))
	out := make([]tls.Certificate, 0, len(nodes))
	for _, n := range nodes {
		if err := checkNode(n); err != nil {
			return nil, fmt.Errorf("certs: %w", err)
		}
		kp, err := create(agentTemplate(n, now, validity), ca.Leaf, ca.PrivateKey.(crypto.Signer))
		if err != nil {
			return nil, err
		}
		der := append([][]byte{kp.cert.Raw}, chain...)
		out = append(out, tls.Certificate{Certificate: der, PrivateKey: kp.key, Leaf: kp.cert})
	}
	return out, nil
}

// checkSigner reports why cert, read from file, cannot sign certificates.
func checkSigner(cert *x509.Certificate, file string) error {
	switch {
	case !cert.IsCA:
		return fmt.Errorf("certs: %s is not a CA certificate", file)
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("certs: CA certificate %s may not sign certificates (no certSign key usage)", file)
	case time.Now().After(cert.NotAfter):
		return fmt.Errorf("certs: CA certificate %s expired at %s", file, cert.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// selfSigned reports whether cert is a root: its issuer is its subject and
// its own key verifies its signature.
func selfSigned(cert *x509.Certificate) bool {
	return bytes.Equal(cert.RawSubject, cert.RawIssuer) && cert.CheckSignatureFrom(cert) == nil
}
