package main

import (
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
)

// runCerts implements "tunnel-server certs": a CA plus server, frontend
// client and per-node agent certificates for a quick start.
func runCerts(args []string) int {
	fs := pflag.NewFlagSet(prog+" certs", pflag.ContinueOnError)
	var (
		out        string
		nodes      []string
		names, ips []string
		opts       certs.Options
		withSSH    sshCertsFlags // ssh.go
	)
	fs.StringVar(&out, "out", "", "directory to write the certificates into (must not already hold them)")
	fs.StringArrayVar(&nodes, "node", nil, "agent certificate for NAME[=IP,IP...] (repeatable)")
	fs.StringSliceVar(&names, "server-name", nil, "extra DNS name of the server certificate (repeatable; localhost is always included)")
	fs.StringSliceVar(&ips, "server-ip", nil, "extra IP of the server certificate (repeatable; 127.0.0.1 and ::1 are always included)")
	fs.StringVar(&opts.ClientName, "client-name", "kube-apiserver", "common name of the frontend client certificate")
	fs.DurationVar(&opts.Validity, "validity", 365*24*time.Hour, "how long the certificates stay valid")
	withSSH.bind(fs)
	err := cli.Parse(fs, args)
	if err == nil {
		err = writeCerts(fs, out, nodes, names, ips, opts)
	}
	if err == nil {
		err = withSSH.write(out, nodes, names, ips)
	}
	return cli.Exit(prog+" certs", fs, err)
}

func writeCerts(fs *pflag.FlagSet, out string, nodes, names, ips []string, opts certs.Options) error {
	if err := cli.Required(fs, "out"); err != nil {
		return err
	}
	opts.Dir = out
	for _, n := range nodes {
		node, err := certs.ParseNode(n)
		if err != nil {
			return &cli.FlagError{Flag: "node", Msg: err.Error()}
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
		return err
	}
	fmt.Fprintf(os.Stdout, "wrote %s %s %s %s %s %s\n", files.CACert, files.CAKey, files.ServerCert, files.ServerKey, files.ClientCert, files.ClientKey)
	for _, n := range opts.Nodes {
		f := files.Agents[n.Name]
		fmt.Fprintf(os.Stdout, "wrote %s %s\n", f[0], f[1])
	}
	return nil
}
