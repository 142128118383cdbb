package cli

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunnel-project/tunnel/certs"
)

// TestReloadingKeyPairBlamesTheFile: an error about the key names the key
// flag, one about the certificate the certificate flag.
func TestReloadingKeyPairBlamesTheFile(t *testing.T) {
	dir := t.TempDir()
	f, err := certs.Generate(certs.Options{Dir: filepath.Join(dir, "pki")})
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "absent")
	for _, tc := range []struct {
		name, cert, key, flag string
	}{
		{"missing key", f.ServerCert, missing, "tls-private-key-file"},
		{"key without a key", f.ServerCert, f.CACert, "tls-private-key-file"},
		{"key of another certificate", f.ServerCert, f.ClientKey, "tls-private-key-file"},
		{"missing certificate", missing, f.ServerKey, "tls-cert-file"},
		{"certificate without a certificate", f.ClientKey, f.ServerKey, "tls-cert-file"},
		{"one file for both", f.ServerKey, f.ServerKey, "tls-cert-file"},
		{"no key given", f.ServerCert, "", "tls-private-key-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReloadingKeyPair("tls-cert-file", "tls-private-key-file", tc.cert, tc.key)
			var fe *FlagError
			if !errors.As(err, &fe) || fe.Flag != tc.flag {
				t.Fatalf("err = %v, want a FlagError for --%s", err, tc.flag)
			}
			if strings.HasPrefix(fe.Msg, "certs:") {
				t.Errorf("err %q keeps the certs: prefix", fe)
			}
		})
	}
}
