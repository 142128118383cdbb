// Package cli holds what both binaries need between their command line and
// the tunnel library: the command line itself (Program: commands, help,
// flags by group), flag errors, logging setup, TLS material, unix-socket
// peers and signals.
package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/tunnel"
)

// FlagError is a mistake in the command line, or a setting that cannot
// work; Program.Run prints it on one line that names the flag, and exits 2.
type FlagError struct {
	Flag string // without dashes; empty for a mistake no one flag made
	Msg  string
}

func (e *FlagError) Error() string {
	if e.Flag == "" {
		return e.Msg
	}
	return "--" + e.Flag + ": " + e.Msg
}

// Blame returns err as a FlagError naming flag, its text without the
// library's package prefix (Message).
func Blame(flag string, err error) *FlagError {
	return &FlagError{Flag: flag, Msg: Message(err)}
}

// pkgPrefixes are the prefixes the libraries' errors carry ("certs: ...").
// A command line names the flag or the command instead, so Message drops
// them: "tunnel-server certs: certs: ..." says the same thing twice.
var pkgPrefixes = []string{"certs: ", "tunnel: ", "kube: ", "konnectivity: "}

// Message returns err's text for the command line: without a leading
// library package prefix.
func Message(err error) string {
	msg := err.Error()
	for _, p := range pkgPrefixes {
		if rest, ok := strings.CutPrefix(msg, p); ok {
			return rest
		}
	}
	return msg
}

// Required returns a FlagError for each empty value, naming its flag.
func Required(fs *pflag.FlagSet, names ...string) error {
	for _, n := range names {
		if f := fs.Lookup(n); f != nil && f.Value.String() == "" {
			return &FlagError{Flag: n, Msg: "is required"}
		}
	}
	return nil
}

// FromConfig turns a *tunnel.ConfigError (or several, joined) into a
// FlagError naming the flag bound to the field; flags maps field names to
// flag names.
func FromConfig(err error, flags map[string]string) error {
	var ce *tunnel.ConfigError
	if errs, ok := err.(interface{ Unwrap() []error }); ok && len(errs.Unwrap()) > 0 {
		err = errs.Unwrap()[0]
	}
	if errors.As(err, &ce) {
		if f, ok := flags[ce.Field]; ok {
			return &FlagError{Flag: f, Msg: ce.Msg}
		}
	}
	return err
}

// LogFlags are the logging flags both binaries take.
type LogFlags struct {
	Level  string
	Format string
}

// Bind adds --log-level and --log-format to fs.
func (l *LogFlags) Bind(fs *pflag.FlagSet) {
	fs.StringVar(&l.Level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.Format, "log-format", "text", "log format: text or json")
}

// Logger builds the slog logger the flags ask for, writing to stderr.
func (l *LogFlags) Logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.Level)); err != nil {
		return nil, &FlagError{Flag: "log-level", Msg: fmt.Sprintf("%q is not debug, info, warn or error", l.Level)}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.Format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, &FlagError{Flag: "log-format", Msg: fmt.Sprintf("%q is not text or json", l.Format)}
}

// IPs parses repeated IP flag values.
func IPs(flag string, vals []string) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(vals))
	for _, v := range vals {
		ip, err := netip.ParseAddr(v)
		if err != nil {
			return nil, &FlagError{Flag: flag, Msg: fmt.Sprintf("%q is not an IP address", v)}
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

// Prefixes parses repeated CIDR flag values.
func Prefixes(flag string, vals []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(vals))
	for _, v := range vals {
		p, err := netip.ParsePrefix(v)
		if err != nil || p != p.Masked() {
			return nil, &FlagError{Flag: flag, Msg: fmt.Sprintf("%q is not a network in CIDR form (like 10.244.1.0/24)", v)}
		}
		out = append(out, p)
	}
	return out, nil
}

// Ports parses repeated port flag values, each 1-65535.
func Ports(flag string, vals []string) ([]uint16, error) {
	out := make([]uint16, 0, len(vals))
	for _, v := range vals {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return nil, &FlagError{Flag: flag, Msg: fmt.Sprintf("%q is not a port from 1 to 65535", v)}
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

// SignalContext returns a context canceled by SIGTERM or SIGINT.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}
