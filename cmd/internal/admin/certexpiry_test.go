package admin

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-project/tunnel/certs"
)

// expiries gathers tunnel_cert_expiry_timestamp_seconds from reg by file.
func expiries(t *testing.T, reg *prometheus.Registry) map[string]int64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, mf := range mfs {
		if mf.GetName() != "tunnel_cert_expiry_timestamp_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = int64(m.GetGauge().GetValue())
		}
	}
	return out
}

// notAfter reads the first certificate of a PEM file.
func notAfter(t *testing.T, file string) int64 {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.NotAfter.Unix()
}

func generate(t *testing.T, validity time.Duration) certs.Files {
	t.Helper()
	f, err := certs.Generate(certs.Options{Dir: filepath.Join(t.TempDir(), "pki"), Validity: validity})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCertExpiryFollowsReloads(t *testing.T) {
	dir := t.TempDir()
	crt, key, ca := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), filepath.Join(dir, "ca.crt")
	long, short := generate(t, 90*24*time.Hour), generate(t, 10*24*time.Hour)
	install := func(f certs.Files) {
		copyFile(t, f.ServerCert, crt)
		copyFile(t, f.ServerKey, key)
		copyFile(t, f.CACert, ca)
	}
	install(long)
	pair, err := certs.ReloadingKeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := certs.ReloadingPool(ca)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	tracked := NewCertExpiry(reg).Track(pair, pool)

	check := func(when string, f certs.Files) {
		t.Helper()
		got := expiries(t, reg)
		want := map[string]int64{crt: notAfter(t, f.ServerCert), ca: notAfter(t, f.CACert)}
		if len(got) != len(want) || got[crt] != want[crt] || got[ca] != want[ca] {
			t.Errorf("%s: expiries %v, want %v (no series for the key file)", when, got, want)
		}
	}
	check("at start", long)

	install(short) // renewed: the new certificates expire first
	for _, r := range tracked {
		if changed, err := r.Reload(); !changed || err != nil {
			t.Fatalf("reload of %v: changed %v, %v", r.Files(), changed, err)
		}
	}
	check("after a reload", short)

	// A broken renewal is not loaded, so the gauge keeps the certificate
	// still in use.
	if err := os.WriteFile(crt, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tracked[0].Reload(); err == nil {
		t.Fatal("a broken certificate file reloaded")
	}
	check("after a failed reload", short)
}
