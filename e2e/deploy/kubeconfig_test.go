package deploy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// deploy/kubernetes/tunnel-server-kubeconfig.sh run against a fake kubectl:
// this test binary, started as `kubectl` by the script, plays the API
// server's CSR API with a CA of its own. The kubeconfig the script writes
// must load in client-go and name the user the RBAC bindings grant.

const (
	kubeconfigScript = "kubernetes/tunnel-server-kubeconfig.sh"
	// fakeKubectlEnv, when set, makes this test binary a fake kubectl
	// keeping its state in the directory it names (TestMain).
	fakeKubectlEnv = "TUNNEL_E2E_FAKE_KUBECTL"
	fakeAPIServer  = "https://10.0.0.1:6443"
	kubeAPIClient  = "kubernetes.io/kube-apiserver-client"
)

func TestKubeconfigScript(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed (Debian package openssl; .ci/run installs it)")
	}
	state, bin := t.TempDir(), t.TempDir()
	caPEM := writeFakeCA(t, state)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "kubectl"), fmt.Appendf(nil, "#!/bin/sh\nexec %q \"$@\"\n", self), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "tunnel", "tunnel-server.conf")
	cmd := exec.Command("sh", filepath.Join(deployDir, kubeconfigScript), "--out", out, "--days", "30")
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), fakeKubectlEnv+"="+state)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", kubeconfigScript, err, o)
	} else {
		t.Logf("%s", bytes.TrimSpace(o))
	}
	if ents, _ := filepath.Glob(filepath.Join(state, "csr-*")); len(ents) != 0 {
		t.Errorf("the script left its CertificateSigningRequest behind: %v", ents)
	}
	cn := checkKubeconfig(t, out, caPEM)
	if users := rbacUsers(t); !slices.Contains(users, cn) {
		t.Errorf("the kubeconfig's user %q is not the user the RBAC bindings name, %v", cn, users)
	}
	checkDefaultOut(t)
}

// checkKubeconfig loads the kubeconfig as tunnel-server's client-go does and
// returns its certificate's common name.
func checkKubeconfig(t *testing.T, file string, caPEM []byte) string {
	t.Helper()
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("%s: %v, mode %v; want a file only its owner reads (it holds a key)", file, err, fi.Mode())
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", file)
	if err != nil {
		t.Fatalf("client-go cannot load the kubeconfig: %v", err)
	}
	if cfg.Host != fakeAPIServer || !bytes.Equal(cfg.CAData, caPEM) {
		t.Errorf("kubeconfig names %s with CA %q; want %s and the current kubeconfig's CA", cfg.Host, cfg.CAData, fakeAPIServer)
	}
	pair, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
	if err != nil {
		t.Fatalf("client certificate and key: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	leaf := pair.Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify for client auth: %v", err)
	}
	if left := time.Until(leaf.NotAfter); left < 29*24*time.Hour || left > 31*24*time.Hour {
		t.Errorf("client certificate valid for %s; --days 30 asked for 30 days", left.Round(time.Hour))
	}
	return leaf.Subject.CommonName
}

// rbacUsers returns the users every binding to tunnel-server's roles
// names, as rendered.
func rbacUsers(t *testing.T) []string {
	t.Helper()
	var users []string
	for _, m := range render(t, "kubernetes/base") {
		var subjects []rbacv1.Subject
		switch b := m.obj.(type) {
		case *rbacv1.ClusterRoleBinding:
			subjects = b.Subjects
		case *rbacv1.RoleBinding:
			subjects = b.Subjects
		}
		for _, s := range subjects {
			if s.Kind == rbacv1.UserKind {
				users = append(users, s.Name)
			}
		}
	}
	return users
}

// checkDefaultOut requires the script to write, by default, the file the
// static pod's --kubeconfig names.
func checkDefaultOut(t *testing.T) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^out=(\S+)$`).FindSubmatch(readDeploy(t, kubeconfigScript))
	if m == nil {
		t.Fatalf("%s: no out=DEFAULT line", kubeconfigScript)
	}
	for _, c := range containers(render(t, "kubernetes/control-plane")) {
		if got, ok := flagValue(c.flagArgs(), "kubeconfig"); ok && got != string(m[1]) {
			t.Errorf("%s: --kubeconfig=%s, but %s writes %s", c.where, got, kubeconfigScript, m[1])
		}
	}
}

func TestKubeconfigScriptShellcheck(t *testing.T) {
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Skip("shellcheck is not installed (Debian package shellcheck; .ci/run installs it)")
	}
	if out, code := run(t, "shellcheck", filepath.Join(deployDir, kubeconfigScript)); code != 0 {
		t.Errorf("shellcheck %s:\n%s", kubeconfigScript, out)
	}
}

// ---------------------------------------------------------------------------
// The fake kubectl.

// writeFakeCA writes the fake API server's signing CA into state and
// returns its certificate.
func writeFakeCA(t *testing.T, state string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake kubernetes CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for name, data := range map[string][]byte{
		"ca.crt": caPEM,
		"ca.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(state, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caPEM
}

// fakeKubectl answers the kubectl commands the script runs, keeping
// CertificateSigningRequests as files in state; it returns the exit code.
func fakeKubectl(state string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := fakeKubectlRun(state, args, stdin, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "fake kubectl %q: %v\n", args, err)
		return 1
	}
	return 0
}

func fakeKubectlRun(state string, args []string, stdin io.Reader, stdout io.Writer) error {
	csrFile := func(name string) string { return filepath.Join(state, "csr-"+name) }
	switch a := strings.Join(args, " "); {
	case a == "create -f -":
		return fakeCreateCSR(state, stdin)
	case len(args) == 3 && args[0] == "certificate" && args[1] == "approve":
		return fakeSign(state, args[2])
	case len(args) == 5 && a == "get csr "+args[2]+" -o jsonpath={.status.certificate}":
		if cert, err := os.ReadFile(csrFile(args[2]) + ".crt"); err == nil {
			fmt.Fprint(stdout, base64.StdEncoding.EncodeToString(cert))
		} else if _, err := os.Stat(csrFile(args[2])); err != nil {
			return err
		}
		return nil
	case len(args) == 3 && args[0] == "delete" && args[1] == "csr":
		os.Remove(csrFile(args[2]) + ".crt")
		return os.Remove(csrFile(args[2]))
	case a == "config view --raw --minify -o jsonpath={.clusters[0].cluster.server}":
		_, err := fmt.Fprint(stdout, fakeAPIServer)
		return err
	case a == "config view --raw --minify -o jsonpath={.clusters[0].cluster.certificate-authority-data}":
		ca, err := os.ReadFile(filepath.Join(state, "ca.crt"))
		fmt.Fprint(stdout, base64.StdEncoding.EncodeToString(ca))
		return err
	}
	return errors.New("not a command the fake knows")
}

// fakeCreateCSR decodes a CertificateSigningRequest strictly and checks
// what kube-apiserver would for the kube-apiserver-client signer.
func fakeCreateCSR(state string, stdin io.Reader) error {
	data, err := io.ReadAll(stdin)
	if err != nil {
		return err
	}
	obj, _, err := strictDecoder().Decode(data, nil, nil)
	if err != nil {
		return err
	}
	csr, ok := obj.(*certificatesv1.CertificateSigningRequest)
	switch {
	case !ok:
		return fmt.Errorf("a %T, not a CertificateSigningRequest", obj)
	case csr.Spec.SignerName != kubeAPIClient:
		return fmt.Errorf("signerName %q, want %s", csr.Spec.SignerName, kubeAPIClient)
	case !slices.Equal(csr.Spec.Usages, []certificatesv1.KeyUsage{certificatesv1.UsageClientAuth}):
		return fmt.Errorf("usages %v, want [client auth]", csr.Spec.Usages)
	case csr.Spec.ExpirationSeconds == nil || *csr.Spec.ExpirationSeconds < 600:
		return fmt.Errorf("expirationSeconds %v: at least 600", csr.Spec.ExpirationSeconds)
	}
	if _, err := parseCSR(csr.Spec.Request); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(state, "csr-"+csr.Name), data, 0o600)
}

func parseCSR(request []byte) (*x509.CertificateRequest, error) {
	b, _ := pem.Decode(request)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("spec.request is not a PEM CERTIFICATE REQUEST")
	}
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, err
	}
	return req, req.CheckSignature()
}

// fakeSign approves and signs the CSR name as the signer would: the
// request's subject, client auth, for expirationSeconds.
func fakeSign(state, name string) error {
	data, err := os.ReadFile(filepath.Join(state, "csr-"+name))
	if err != nil {
		return err
	}
	obj, _, err := strictDecoder().Decode(data, nil, nil)
	if err != nil {
		return err
	}
	csr := obj.(*certificatesv1.CertificateSigningRequest)
	req, err := parseCSR(csr.Spec.Request)
	if err != nil {
		return err
	}
	caCert, caKey, err := loadFakeCA(state)
	if err != nil {
		return err
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), Subject: req.Subject,
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Duration(*csr.Spec.ExpirationSeconds) * time.Second),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, caCert, req.PublicKey, caKey)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(state, "csr-"+name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
}

func loadFakeCA(state string) (*x509.Certificate, any, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(state, "ca.crt"), filepath.Join(state, "ca.key"))
	if err != nil {
		return nil, nil, err
	}
	return pair.Leaf, pair.PrivateKey, nil
}
