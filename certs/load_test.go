package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTemp writes data to name in dir and returns the path.
func writeTemp(t *testing.T, dir, name, data string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// pemText encodes one PEM block.
func pemText(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// checkErr fails unless err starts with "certs: ", once, and holds every
// part.
func checkErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want one containing %q", parts)
	}
	if !strings.HasPrefix(err.Error(), "certs: ") || strings.Count(err.Error(), "certs:") != 1 {
		t.Errorf("err %q does not start with the certs: prefix once", err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("err %q does not contain %q", err, p)
		}
	}
}

func TestLoadPoolErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, file string
		want       string
	}{
		{"missing", filepath.Join(dir, "absent.crt"), "no such file"},
		{"no PEM", writeTemp(t, dir, "text.crt", "not a certificate\n"), "no PEM blocks"},
		{"empty", writeTemp(t, dir, "empty.crt", ""), "no PEM blocks"},
		{"only a key", writeTemp(t, dir, "key.crt", pemText("PRIVATE KEY", []byte{1})), "no CERTIFICATE"},
		{"bad certificate", writeTemp(t, dir, "bad.crt", pemText("CERTIFICATE", []byte("junk"))), "bad certificate #1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadPool(tt.file)
			checkErr(t, err, tt.file, tt.want)
		})
	}
	_, err := LoadPool("")
	checkErr(t, err, "no CA bundle file given")
}

func TestLoadPoolMissingIsNotExist(t *testing.T) {
	_, err := LoadPool(filepath.Join(t.TempDir(), "absent"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want fs.ErrNotExist in the chain", err)
	}
}

func TestLoadKeyPairErrors(t *testing.T) {
	fx := generate(t)
	dir := t.TempDir()
	f, a := fx.files, fx.files.Agents["node-a"]
	missing := filepath.Join(dir, "absent.key")
	tests := []struct {
		name, cert, key string
		want            []string
	}{
		{"mismatched key", f.ServerCert, f.ClientKey, []string{f.ClientKey, f.ServerCert, "does not match"}},
		{"agent with other agent's key", a[0], fx.files.Agents["node-c"][1], []string{"does not match"}},
		{"missing key", f.ServerCert, missing, []string{missing, "no such file"}},
		{"missing cert", filepath.Join(dir, "absent.crt"), f.ServerKey, []string{"absent.crt", "no such file"}},
		{"key as cert", f.ServerKey, f.ServerKey, []string{f.ServerKey, "no CERTIFICATE"}},
		{"cert as key", f.ServerCert, f.ServerCert, []string{f.ServerCert, "no PRIVATE KEY"}},
		{"no PEM key", f.ServerCert, writeTemp(t, dir, "text.key", "hello"), []string{"text.key", "no PEM blocks"}},
		{"bad key", f.ServerCert, writeTemp(t, dir, "bad.key", pemText("PRIVATE KEY", []byte("junk"))), []string{"bad.key", "bad PRIVATE KEY"}},
		{"encrypted key", f.ServerCert, writeTemp(t, dir, "enc.key", pemText("ENCRYPTED PRIVATE KEY", []byte{1})), []string{"encrypted"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadKeyPair(tt.cert, tt.key)
			checkErr(t, err, tt.want...)
		})
	}
}

// TestLoadKeyPairBlamesOneFile: every error is a *FileError that names
// the file at fault, so that a command can name the flag that gave it; a
// key that does not match its certificate is the key's fault.
func TestLoadKeyPairBlamesOneFile(t *testing.T) {
	fx := generate(t)
	f := fx.files
	dir := t.TempDir()
	missing := filepath.Join(dir, "absent")
	for _, tt := range []struct {
		name, cert, key string
		file, what      string
	}{
		{"missing key", f.ServerCert, missing, missing, "private key"},
		{"missing cert", missing, f.ServerKey, missing, "certificate"},
		{"mismatched key", f.ServerCert, f.ClientKey, f.ClientKey, "private key"},
		{"cert as key", f.ServerCert, f.CACert, f.CACert, "private key"},
		{"key as cert", f.ServerKey, f.ServerKey, f.ServerKey, "certificate"},
		{"no key given", f.ServerCert, "", "", "private key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadKeyPair(tt.cert, tt.key)
			var fe *FileError
			if !errors.As(err, &fe) || fe.File != tt.file || fe.What != tt.what {
				t.Fatalf("err = %#v (%v), want a FileError for %s %q", err, err, tt.what, tt.file)
			}
		})
	}
	_, err := LoadKeyPair(f.ServerCert, missing)
	if want := "certs: private key " + missing + ": no such file or directory"; err == nil || err.Error() != want || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing key: %v, want %q with fs.ErrNotExist in the chain", err, want)
	}
}

func TestLoadKeyPairFormats(t *testing.T) {
	dir := t.TempDir()
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  crypto.Signer
		pem  string
	}{
		{"SEC 1", ecKey, pemText("EC PRIVATE KEY", ecDER)},
		{"PKCS 1", rsaKey, pemText("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM := selfSignedPEM(t, tt.key)
			c, err := LoadKeyPair(writeTemp(t, dir, "c.crt", certPEM), writeTemp(t, dir, "c.key", tt.pem))
			if err != nil {
				t.Fatalf("LoadKeyPair: %v", err)
			}
			if c.Leaf == nil || len(c.Certificate) != 1 {
				t.Errorf("got Leaf %v, %d certificates", c.Leaf != nil, len(c.Certificate))
			}
		})
	}
}

// selfSignedPEM returns a minimal self-signed certificate for key, as PEM.
func selfSignedPEM(t *testing.T, key crypto.Signer) string {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pemText("CERTIFICATE", der)
}
