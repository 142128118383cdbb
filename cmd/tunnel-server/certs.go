package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"time"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
)

// certsFlags are "tunnel-server certs": a CA plus server, frontend client
// and per-node agent certificates for a quick start, and with --ssh the
// SSH transport's keys.
type certsFlags struct {
	out        string
	nodes      []string
	names, ips []string
	opts       certs.Options
	ssh        sshCertsFlags // ssh.go
}

// Groups of the certs command's flags.
const (
	groupOutput       = "Output"
	groupCertificates = "Certificate"
)

// setupCerts binds the certs command's flags and returns what writes them.
func setupCerts(g *cli.FlagGroups, stdout io.Writer) func() error {
	f := &certsFlags{}
	out := g.Group(groupOutput)
	out.StringVar(&f.out, "out", "", "directory to write the certificates into (must not already hold them)")
	c := g.Group(groupCertificates)
	c.StringArrayVar(&f.nodes, "node", nil, "agent certificate for NAME[=IP,IP...] (repeatable)")
	c.StringSliceVar(&f.names, "server-name", nil, "extra DNS name of the server certificate (repeatable; localhost is always included)")
	c.StringSliceVar(&f.ips, "server-ip", nil, "extra IP of the server certificate (repeatable; 127.0.0.1 and ::1 are always included)")
	c.StringVar(&f.opts.ClientName, "client-name", "kube-apiserver", "common name of the frontend client certificate")
	c.DurationVar(&f.opts.Validity, "validity", 365*24*time.Hour, "how long the certificates stay valid")
	f.ssh.bind(g.Group(cli.GroupSSH))
	return func() error {
		if err := writeCerts(stdout, g.Set(), f.out, f.nodes, f.names, f.ips, f.opts); err != nil {
			return err
		}
		return f.ssh.write(stdout, f.out, f.nodes, f.names, f.ips)
	}
}

func writeCerts(stdout io.Writer, fs *pflag.FlagSet, out string, nodes, names, ips []string, opts certs.Options) error {
	if err := cli.Required(fs, "out"); err != nil {
		return err
	}
	opts.Dir = out
	for _, n := range nodes {
		node, err := certs.ParseNode(n)
		if err != nil {
			return cli.Blame("node", err)
		}
		opts.Nodes = append(opts.Nodes, node)
	}
	serverIPs, err := cli.IPs("server-ip", ips)
	if err != nil {
		return err
	}
	opts.ServerNames = append([]string{"localhost"}, names...)
	opts.ServerIPs = append([]netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}, serverIPs...)
	files, err := certs.Generate(opts)
	if err != nil {
		return generateError(err)
	}
	fmt.Fprintf(stdout, "wrote %s %s %s %s %s %s\n", files.CACert, files.CAKey, files.ServerCert, files.ServerKey, files.ClientCert, files.ClientKey)
	for _, n := range opts.Nodes {
		f := files.Agents[n.Name]
		fmt.Fprintf(stdout, "wrote %s %s\n", f[0], f[1])
	}
	return nil
}

// optionFlags names the flag bound to each certs.Options field.
var optionFlags = map[string]string{
	"Dir":         "out",
	"Validity":    "validity",
	"ClientName":  "client-name",
	"ServerNames": "server-name",
	"ServerIPs":   "server-ip",
	"Nodes":       "node",
}

// generateError names the flag behind a certs.Generate error where one
// flag is: the option's, or --out for files that exist or cannot be
// written.
func generateError(err error) error {
	var oe *certs.OptionError
	var pe *fs.PathError
	switch {
	case errors.As(err, &oe) && optionFlags[oe.Field] != "":
		return &cli.FlagError{Flag: optionFlags[oe.Field], Msg: oe.Msg}
	case errors.Is(err, fs.ErrExist), errors.As(err, &pe):
		return cli.Blame("out", err)
	}
	return err
}
