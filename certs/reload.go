package certs

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Rotating certificates without a restart: a Reloading value holds what was
// last loaded from its files, and Reload loads them again when any of them
// changed (size, modification time or inode: a Kubernetes Secret volume's
// atomic symlink swap shows up as a new inode). A file that fails to load
// is reported and the previous material stays in use, so a half-written or
// broken file never takes a running daemon down.
//
// ServerTLS and ClientTLS build tls.Configs that read the current material
// at every handshake: established connections keep the keys they agreed on,
// new connections use the new material.

// Reloading is material loaded from files that can be loaded again.
type Reloading[T any] struct {
	files []string
	whats []string // what each file holds, for errors
	load  func() (T, error)
	cur   atomic.Pointer[T]
	mu    sync.Mutex        // serialises Reload
	seen  [sha256.Size]byte // of the files loaded last
}

func newReloading[T any](load func() (T, error), files, whats []string) (*Reloading[T], error) {
	r := &Reloading[T]{files: files, whats: whats, load: load}
	if _, err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// ReloadingKeyPair loads a key pair as LoadKeyPair does and can reload it.
func ReloadingKeyPair(certFile, keyFile string) (*Reloading[tls.Certificate], error) {
	return newReloading(func() (tls.Certificate, error) { return LoadKeyPair(certFile, keyFile) },
		[]string{certFile, keyFile}, []string{whatCert, whatKey})
}

// ReloadingPool loads a CA bundle as LoadPool does and can reload it.
func ReloadingPool(file string) (*Reloading[*x509.CertPool], error) {
	return newReloading(func() (*x509.CertPool, error) { return LoadPool(file) }, []string{file}, []string{whatCA})
}

// Current returns the material most recently loaded.
func (r *Reloading[T]) Current() T { return *r.cur.Load() }

// Files returns the files the material is loaded from.
func (r *Reloading[T]) Files() []string { return r.files }

// Reload loads the files again if any changed since the last load and
// reports whether new material is now in use. On error the previous
// material is kept, and the same files are tried again on the next call.
func (r *Reloading[T]) Reload() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := sha256.New()
	for i, f := range r.files {
		data, err := readFile(f, r.whats[i])
		if err != nil {
			return false, err
		}
		fileSum := sha256.Sum256(data)
		h.Write(fileSum[:])
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if r.cur.Load() != nil && sum == r.seen {
		return false, nil
	}
	v, err := r.load()
	if err != nil {
		return false, err
	}
	r.cur.Store(&v)
	r.seen = sum
	return true, nil
}

// ServerTLS returns a TLS 1.3 server configuration that presents the
// current key pair and, when clientCAs is not nil, requires a client
// certificate that verifies against the current bundle. Each handshake
// uses a copy of the returned configuration with the bundle of the moment,
// so settings the caller adds to it afterwards (VerifyConnection, say)
// apply too.
func ServerTLS(pair *Reloading[tls.Certificate], clientCAs *Reloading[*x509.CertPool]) *tls.Config {
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c := pair.Current()
			return &c, nil
		},
	}
	if clientCAs == nil {
		return base
	}
	base.ClientAuth = tls.RequireAndVerifyClientCert
	base.ClientCAs = clientCAs.Current()
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = clientCAs.Current()
		return c, nil
	}
	return base
}

// ClientTLS returns a TLS 1.3 client configuration that presents the
// current key pair and verifies the server's certificate for serverName
// (a DNS name or an IP address; empty means the name crypto/tls sends,
// which is the dialed host unless that is an IP address) against the
// current bundle.
//
// crypto/tls reads RootCAs once per Config, so the verification that would
// use it is done here instead, against the bundle of the moment, with the
// same rules: the chain must reach a root in the bundle, be valid now, be
// meant for server authentication, and name the server.
func ClientTLS(pair *Reloading[tls.Certificate], roots *Reloading[*x509.CertPool], serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := pair.Current()
			return &c, nil
		},
		InsecureSkipVerify: true, // verified by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			name := serverName // crypto/tls leaves cs.ServerName empty for an IP address
			if name == "" {
				name = cs.ServerName
			}
			return verifyServer(cs, roots.Current(), name)
		},
	}
}

func verifyServer(cs tls.ConnectionState, roots *x509.CertPool, name string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("certs: the server sent no certificate")
	}
	if name == "" {
		return errors.New("certs: no server name to verify the server's certificate against")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       name,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("certs: server certificate: %w", err)
	}
	return nil
}
