package admin

import (
	"crypto/x509"
	"encoding/pem"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-project/tunnel/cmd/internal/cli"
)

// CertExpiry is tunnel_cert_expiry_timestamp_seconds{file}: for each
// certificate file in use (key pair, CA bundle), when the first certificate
// in it expires, in Unix seconds. An alert compares it with time()
// (deploy/prometheus/tunnel-rules.yaml). It follows the material the
// binary uses, not the disk: a renewed file that fails to load leaves the
// old value, as it leaves the old certificate in use. A file holding only a
// key has no series; a file is one series whichever flags name it.
type CertExpiry struct {
	vec *prometheus.GaugeVec
}

// NewCertExpiry registers the gauge on reg.
func NewCertExpiry(reg prometheus.Registerer) *CertExpiry {
	e := &CertExpiry{vec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tunnel_cert_expiry_timestamp_seconds",
		Help: "When the first certificate in each certificate file in use expires (NotAfter), in Unix seconds.",
	}, []string{"file"})}
	reg.MustRegister(e.vec)
	return e
}

// Track sets the gauge for what rs hold now and returns rs wrapped so that
// each reload that puts new material in use sets it again; give the result
// to cli.WatchCerts.
func (e *CertExpiry) Track(rs ...cli.Reloader) []cli.Reloader {
	out := make([]cli.Reloader, len(rs))
	for i, r := range rs {
		e.observe(r)
		out[i] = expiryTracked{r, e}
	}
	return out
}

// observe sets the gauge for each of r's files that holds a certificate.
func (e *CertExpiry) observe(r cli.Reloader) {
	for _, f := range r.Files() {
		if notAfter, ok := firstExpiry(f); ok {
			e.vec.WithLabelValues(f).Set(float64(notAfter))
		}
	}
}

// firstExpiry returns the earliest NotAfter, in Unix seconds, of the PEM
// certificates in file; false if it holds none that parse.
func firstExpiry(file string) (int64, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	var first int64
	found := false
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return first, found
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil && (!found || c.NotAfter.Unix() < first) {
			first, found = c.NotAfter.Unix(), true
		}
	}
}

// expiryTracked is a Reloader whose successful reloads update CertExpiry.
type expiryTracked struct {
	cli.Reloader
	e *CertExpiry
}

func (t expiryTracked) Reload() (bool, error) {
	changed, err := t.Reloader.Reload()
	if changed {
		t.e.observe(t.Reloader)
	}
	return changed, err
}
