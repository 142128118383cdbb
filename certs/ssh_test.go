package certs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSSHLoadErrors: the SSH loaders' errors are *FileError values that
// start with "certs: " once and name the file at fault.
func TestSSHLoadErrors(t *testing.T) {
	dir := t.TempDir()
	files, err := GenerateSSH(SSHOptions{Dir: dir, ServerAddresses: []string{"localhost:8135"}, Nodes: []Node{{Name: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "absent")
	junk := writeTemp(t, dir, "junk", "not a key\n")
	key := strings.Fields(mustRead(t, files.HostKey+".pub")) // type, key, comment
	noPrincipals := writeTemp(t, dir, "ak", key[0]+" "+key[1]+"\n")
	badCert := files.Agents["node-a"]
	writeTemp(t, dir, filepath.Base(badCert)+"-cert.pub", "junk\n")
	for _, tc := range []struct {
		name string
		load func() error
		file string
		want string
	}{
		{"signer missing", func() error { _, err := LoadSSHSigner(missing); return err }, missing, "certs: SSH private key " + missing + ": no such file or directory"},
		{"signer junk", func() error { _, err := LoadSSHSigner(junk); return err }, junk, "certs: SSH private key " + junk + ": ssh: no key found"},
		{"signer's certificate junk", func() error { _, err := LoadSSHSigner(badCert); return err }, badCert + "-cert.pub", "certs: SSH certificate " + badCert + "-cert.pub: "},
		{"authorized_keys missing", func() error { _, err := LoadSSHAuthorizedKeys(missing); return err }, missing, "certs: authorized_keys file " + missing + ": no such file or directory"},
		{"authorized_keys without principals", func() error { _, err := LoadSSHAuthorizedKeys(noPrincipals); return err }, noPrincipals,
			"certs: authorized_keys file " + noPrincipals + ": line 1: no principals=\"NODE\" option"},
		{"public keys empty", func() error { _, err := LoadSSHPublicKeys(writeTemp(t, dir, "empty.pub", "\n")); return err }, filepath.Join(dir, "empty.pub"),
			"certs: SSH public key file " + filepath.Join(dir, "empty.pub") + ": no keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.load()
			var fe *FileError
			if !errors.As(err, &fe) || fe.File != tc.file || !strings.HasPrefix(err.Error(), tc.want) || strings.Count(err.Error(), "certs:") != 1 {
				t.Errorf("err = %v, want a FileError for %s starting %q", err, tc.file, tc.want)
			}
		})
	}
	if _, err := LoadSSHSigner(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing key: %v lacks fs.ErrNotExist", err)
	}
	if _, err := ParseSSHAuthorizedKeys([]byte("junk\n")); err == nil || !strings.HasPrefix(err.Error(), "certs: authorized_keys line 1: ") {
		t.Errorf("ParseSSHAuthorizedKeys(junk) = %v", err)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
