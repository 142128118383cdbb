package certs

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// PEM block types this file reads.
const (
	pemCertificate = "CERTIFICATE"
	pemPKCS8       = "PRIVATE KEY"
	pemEC          = "EC PRIVATE KEY"
	pemRSA         = "RSA PRIVATE KEY"
	pemEncrypted   = "ENCRYPTED PRIVATE KEY"
)

// LoadPool reads a PEM bundle of one or more CA certificates from file and
// returns them as a pool for tls.Config.RootCAs or ClientCAs. Blocks of other
// types are skipped, so a combined PEM file works. Errors name the file and
// say what is wrong: missing, no PEM blocks, no certificate, or a
// certificate that does not parse.
func LoadPool(file string) (*x509.CertPool, error) {
	cas, err := readCerts(file, "CA bundle")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	return pool, nil
}

// LoadKeyPair loads a PEM certificate chain (leaf first) from certFile and
// its private key from keyFile, checks that the key belongs to the leaf, and
// returns a tls.Certificate with Leaf set so callers can read the identity
// without parsing again. The key may be PKCS #8, SEC 1 (EC) or PKCS #1 (RSA)
// PEM; encrypted keys are refused. Errors name the file at fault.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	chain, err := readCerts(certFile, "certificate")
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := readKey(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		return tls.Certificate{}, fmt.Errorf("certs: private key %s does not match certificate %s", keyFile, certFile)
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	return tls.Certificate{Certificate: der, PrivateKey: key, Leaf: chain[0]}, nil
}

// readFile reads file, naming what it holds in the error. A missing file
// keeps fs.ErrNotExist in the chain.
func readFile(file, what string) ([]byte, error) {
	if file == "" {
		return nil, fmt.Errorf("certs: no %s file given", what)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("certs: read %s: %w", what, err)
	}
	return data, nil
}

// pemBlocks decodes every PEM block in data, ignoring text between blocks.
func pemBlocks(data []byte) []*pem.Block {
	var blocks []*pem.Block
	for {
		b, rest := pem.Decode(data)
		if b == nil {
			return blocks
		}
		blocks = append(blocks, b)
		data = rest
	}
}

// readCerts parses every CERTIFICATE block of file, in order. It fails if
// there is none.
func readCerts(file, what string) ([]*x509.Certificate, error) {
	data, err := readFile(file, what)
	if err != nil {
		return nil, err
	}
	blocks := pemBlocks(data)
	if len(blocks) == 0 {
		return nil, fmt.Errorf("certs: %s %s: no PEM blocks found", what, file)
	}
	var certs []*x509.Certificate
	for _, b := range blocks {
		if b.Type != pemCertificate {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: %s %s: bad certificate #%d: %w", what, file, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("certs: %s %s: no %s PEM block found", what, file, pemCertificate)
	}
	return certs, nil
}

// readKey parses the first private-key block of file.
func readKey(file string) (crypto.Signer, error) {
	data, err := readFile(file, "private key")
	if err != nil {
		return nil, err
	}
	blocks := pemBlocks(data)
	if len(blocks) == 0 {
		return nil, fmt.Errorf("certs: private key %s: no PEM blocks found", file)
	}
	for _, b := range blocks {
		if strings.HasSuffix(b.Type, pemPKCS8) {
			key, err := parseKey(b)
			if err != nil {
				return nil, fmt.Errorf("certs: private key %s: %w", file, err)
			}
			return key, nil
		}
	}
	return nil, fmt.Errorf("certs: private key %s: no %s PEM block found", file, pemPKCS8)
}

// parseKey decodes one private-key block into a key crypto/tls can sign with.
func parseKey(b *pem.Block) (crypto.Signer, error) {
	if b.Type == pemEncrypted || b.Headers["Proc-Type"] != "" {
		return nil, errors.New("encrypted private keys are not supported")
	}
	var key any
	var err error
	switch b.Type {
	case pemPKCS8:
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case pemEC:
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case pemRSA:
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block type %q", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("bad %s block: %w", b.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T keys cannot sign", key)
	}
	return signer, nil
}

// publicKeysEqual reports whether a certificate's public key is pub. All key
// types crypto/x509 parses have an Equal method.
func publicKeysEqual(certPub, pub crypto.PublicKey) bool {
	k, ok := certPub.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(pub)
}
