// Package cli holds what both binaries need between their flags and the
// tunnel library: logging setup, flag errors, TLS material and signals.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/tunnel"
)

// FlagError is a mistake in the command line; Main prints it on one line.
type FlagError struct {
	Flag string
	Msg  string
}

func (e *FlagError) Error() string {
	if e.Flag == "" {
		return e.Msg
	}
	return "--" + e.Flag + ": " + e.Msg
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

// Parse parses args into fs without printing usage on error; the error
// names the flag at fault. It returns pflag.ErrHelp for --help.
func Parse(fs *pflag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	fs.Init(fs.Name(), pflag.ContinueOnError)
	fs.SortFlags = false
	err := fs.Parse(args)
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		return &FlagError{Msg: err.Error()} // pflag's text names the flag
	}
	return err
}

// Exit prints err on one line as "prog: err" and returns the exit code:
// 0 for --help (after printing usage), 2 for flag mistakes, 1 otherwise.
func Exit(prog string, fs *pflag.FlagSet, err error) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintf(os.Stdout, "Usage of %s:\n%s", prog, fs.FlagUsages())
		return 0
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
	var fe *FlagError
	if errors.As(err, &fe) {
		return 2
	}
	return 1
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
