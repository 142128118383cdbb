package main

import (
	"bytes"
	"log/slog"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tunnel-project/tunnel/certs"
)

// run runs tunnel-agent with args in-process and returns its exit code,
// stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	p := program()
	p.Stdout, p.Stderr = &stdout, &stderr
	code := p.Run(args)
	return code, stdout.String(), stderr.String()
}

// TestArgs: every command line of tunnel-agent either prints what was
// asked, or is refused on one line that names the argument or flag at
// fault (exit 2) — never silently ignored.
func TestArgs(t *testing.T) {
	f, err := certs.Generate(certs.Options{Dir: filepath.Join(t.TempDir(), "pki"), Nodes: []certs.Node{{Name: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"--server-address=127.0.0.1:1", "--admin-listen-address=", "--node-name=node-a",
		"--ca-file=" + f.CACert, "--tls-cert-file=" + f.Agents["node-a"][0], "--tls-private-key-file=" + f.Agents["node-a"][1]}
	with := func(extra ...string) []string { return append(append([]string{}, base...), extra...) }
	missing := filepath.Join(t.TempDir(), "absent")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // contained in stdout
		stderr string // stderr, exactly
	}{
		{"help", []string{"--help"}, 0, "\nCommands:\n  help ", ""},
		{"help command", []string{"help"}, 0, "\nDestination policy flags:\n", ""},
		{"help version", []string{"help", "version"}, 0, "Usage:\n  tunnel-agent version [flags]", ""},
		{"version", []string{"version"}, 0, "tunnel-agent version ", ""},
		{"--version", []string{"--version"}, 0, "tunnel-agent version ", ""},

		{"unknown command", []string{"certs"}, 2, "", "tunnel-agent: unknown command \"certs\"; tunnel-agent --help lists the commands\n"},
		{"help unknown command", []string{"help", "demo"}, 2, "", "tunnel-agent help: unknown command \"demo\"; tunnel-agent --help lists the commands\n"},
		{"stray argument", with("node-b"), 2, "", "tunnel-agent: unexpected argument \"node-b\"; see tunnel-agent --help\n"},
		{"boolean with a separate value", with("--default-route", "true"), 2, "",
			"tunnel-agent: unexpected argument \"true\" (a boolean flag takes its value after '=', as in --name=false); see tunnel-agent --help\n"},
		{"version stray argument", []string{"version", "--", "x"}, 2, "", "tunnel-agent version: unexpected argument \"x\"; see tunnel-agent version --help\n"},
		{"unknown flag", with("--uds-path=x"), 2, "", "tunnel-agent: unknown flag: --uds-path; see tunnel-agent --help\n"},
		{"bad transport", with("--transport=quic"), 2, "",
			"tunnel-agent: invalid argument \"quic\" for \"--transport\" flag: \"quic\" is neither tls nor ssh; see tunnel-agent --help\n"},

		{"missing key file", with("--tls-private-key-file=" + missing), 2, "", "tunnel-agent: --tls-private-key-file: private key " + missing + ": no such file or directory\n"},
		{"missing certificate file", with("--tls-cert-file=" + missing), 2, "", "tunnel-agent: --tls-cert-file: certificate " + missing + ": no such file or directory\n"},
		{"key of another certificate", with("--tls-private-key-file=" + f.ServerKey), 2, "",
			"tunnel-agent: --tls-private-key-file: private key " + f.ServerKey + ": does not match certificate " + f.Agents["node-a"][0] + "\n"},
		{"missing CA", with("--ca-file=" + missing), 2, "", "tunnel-agent: --ca-file: CA bundle " + missing + ": no such file or directory\n"},
		{"missing SSH key", []string{"--transport=ssh", "--server-address=127.0.0.1:1", "--node-name=node-a", "--ssh-key-file=" + missing, "--ssh-known-hosts-file=" + missing}, 2, "",
			"tunnel-agent: --ssh-key-file: SSH private key " + missing + ": no such file or directory\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tc.args...)
			if code != tc.code || stderr != tc.stderr || !strings.Contains(stdout, tc.stdout) {
				t.Errorf("tunnel-agent %q: exit %d\nstdout %q\nstderr %q\nwant exit %d, stdout with %q, stderr %q",
					tc.args, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestHelp: --help lists the agent's commands and every group, booleans
// plainly.
func TestHelp(t *testing.T) {
	_, out, _ := run(t, "--help")
	for _, want := range []string{
		"\nCommands:\n  help      ", "\n  version   ",
		"\nServer connection flags:\n", "\nTLS flags:\n", "\nSSH flags:\n", "\nNode and routing flags:\n",
		"\nDestination policy flags:\n", "\nObservability flags:\n", "\nGeneral flags:\n",
		"\n      --default-route   ", "\n      --resolve-names   ", "\n      --enable-profiling   ",
		"\n  -h, --help   ", "\n      --version   ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if regexp.MustCompile(`=true|true\|false|\(default false\)`).MatchString(out) {
		t.Errorf("--help shows boolean noise:\n%s", out)
	}
}

// TestBroadRangeWarning: an --allow-cidr of a whole address family is
// warned about, naming the flag; narrower ranges are not.
func TestBroadRangeWarning(t *testing.T) {
	for _, tc := range []struct {
		cidrs []string
		warn  []string // the ranges warned about
	}{
		{[]string{"10.96.0.0/12", "fd00::/8"}, nil},
		{[]string{"0.0.0.0/0"}, []string{"0.0.0.0/0"}},
		{[]string{"::/0", "10.96.0.0/12", "0.0.0.0/0"}, []string{"::/0", "0.0.0.0/0"}},
		{[]string{"0.0.0.0/1", "128.0.0.0/1"}, nil}, // only a range of a whole family is warned about
	} {
		var prefixes []netip.Prefix
		for _, c := range tc.cidrs {
			prefixes = append(prefixes, netip.MustParsePrefix(c))
		}
		var buf bytes.Buffer
		warnBroadRanges(slog.New(slog.NewTextHandler(&buf, nil)), prefixes)
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			if m := regexp.MustCompile(`level=WARN .* flag=--allow-cidr cidr=(\S+)`).FindStringSubmatch(line); m != nil {
				got = append(got, m[1])
			}
		}
		if strings.Join(got, " ") != strings.Join(tc.warn, " ") {
			t.Errorf("--allow-cidr %v: warned about %v, want %v; log:\n%s", tc.cidrs, got, tc.warn, buf.String())
		}
	}
}
