package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/certs"
)

// Reloader is certificate material that can be loaded again from its files
// (a *certs.Reloading).
type Reloader interface {
	Reload() (bool, error)
	Files() []string
}

// ReloadingKeyPair loads a certificate and key that WatchCerts can reload.
// An error names the flag of the file at fault: keyFlag for a key that is
// missing, unreadable or not the certificate's, certFlag otherwise.
func ReloadingKeyPair(certFlag, keyFlag, certFile, keyFile string) (*certs.Reloading[tls.Certificate], error) {
	r, err := certs.ReloadingKeyPair(certFile, keyFile)
	if err != nil {
		flag := certFlag
		if fe := (*certs.FileError)(nil); errors.As(err, &fe) && fe.File == keyFile && keyFile != certFile {
			flag = keyFlag
		}
		return nil, Blame(flag, err)
	}
	return r, nil
}

// ReloadingPool loads a CA bundle that WatchCerts can reload, blaming flag
// for errors.
func ReloadingPool(flag, file string) (*certs.Reloading[*x509.CertPool], error) {
	r, err := certs.ReloadingPool(file)
	if err != nil {
		return nil, Blame(flag, err)
	}
	return r, nil
}

// ReloadFlags configures certificate reloading.
type ReloadFlags struct {
	Interval time.Duration
}

// Bind adds --cert-reload-interval to fs.
func (f *ReloadFlags) Bind(fs *pflag.FlagSet) {
	fs.DurationVar(&f.Interval, "cert-reload-interval", 30*time.Second,
		"how often certificate, key and CA files are checked for changes (0: only on SIGHUP)")
}

// Validate checks the flag's value.
func (f *ReloadFlags) Validate() error {
	if f.Interval < 0 {
		return &FlagError{Flag: "cert-reload-interval", Msg: "must not be negative"}
	}
	return nil
}

// WatchCerts reloads rs every interval (when positive) and on SIGHUP, until
// ctx ends. New material serves new connections; established ones keep
// theirs. A reload that fails is logged and the material in use is kept.
func WatchCerts(ctx context.Context, log *slog.Logger, interval time.Duration, rs ...Reloader) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		tick = t.C
		defer t.Stop()
	}
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: checking certificate files")
			case <-tick:
			}
			for _, r := range rs {
				switch changed, err := r.Reload(); {
				case err != nil:
					log.Error("certificate reload failed; keeping the material in use", "files", r.Files(), "err", err)
				case changed:
					log.Info("certificate material reloaded", "files", r.Files())
				}
			}
		}
	}()
}
