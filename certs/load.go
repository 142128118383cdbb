package certs

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// FileError is a file of key material that cannot be used: missing,
// unreadable, or not holding what it should. It names the file and what
// the file was to hold, so that a caller that passed several files (a
// certificate and its key) can tell which one is at fault.
type FileError struct {
	File string // the path as given; empty if none was
	What string // what the file was to hold: "certificate", "private key", "CA bundle", ...
	Err  error  // what is wrong
}

func (e *FileError) Error() string {
	if e.File == "" {
		return "certs: no " + e.What + " file given"
	}
	reason := e.Err.Error()
	if pe := (*fs.PathError)(nil); errors.As(e.Err, &pe) && pe.Path == e.File {
		reason = pe.Err.Error() // the path is named already
	}
	return "certs: " + e.What + " " + e.File + ": " + reason
}

// Unwrap returns what is wrong: a missing file has fs.ErrNotExist in its
// chain.
func (e *FileError) Unwrap() error { return e.Err }

// What a file holds, as FileError names it.
const (
	whatCert = "certificate"
	whatKey  = "private key"
	whatCA   = "CA bundle"
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
	cas, err := readCerts(file, whatCA)
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
// PEM; encrypted keys are refused. Errors are *FileError values naming the
// file at fault; a key that does not match the certificate blames the key.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	chain, err := readCerts(certFile, whatCert)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := readKey(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		return tls.Certificate{}, &FileError{File: keyFile, What: whatKey, Err: fmt.Errorf("does not match certificate %s", certFile)}
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
		return nil, &FileError{What: what}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, &FileError{File: file, What: what, Err: err}
	}
	return data, nil
}

var errNoPEM = errors.New("no PEM blocks found")

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
		return nil, &FileError{File: file, What: what, Err: errNoPEM}
	}
	var certs []*x509.Certificate
	for _, b := range blocks {
		if b.Type != pemCertificate {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, &FileError{File: file, What: what, Err: fmt.Errorf("bad certificate #%d: %w", len(certs)+1, err)}
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, &FileError{File: file, What: what, Err: fmt.Errorf("no %s PEM block found", pemCertificate)}
	}
	return certs, nil
}

// readKey parses the first private-key block of file.
func readKey(file string) (crypto.Signer, error) {
	data, err := readFile(file, whatKey)
	if err != nil {
		return nil, err
	}
	blocks := pemBlocks(data)
	if len(blocks) == 0 {
		return nil, &FileError{File: file, What: whatKey, Err: errNoPEM}
	}
	for _, b := range blocks {
		if strings.HasSuffix(b.Type, pemPKCS8) {
			key, err := parseKey(b)
			if err != nil {
				return nil, &FileError{File: file, What: whatKey, Err: err}
			}
			return key, nil
		}
	}
	return nil, &FileError{File: file, What: whatKey, Err: fmt.Errorf("no %s PEM block found", pemPKCS8)}
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
