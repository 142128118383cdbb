package main

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/certs"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
)

// run runs tunnel-server with args in-process and returns its exit code,
// stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	p := program()
	p.Stdout, p.Stderr = &stdout, &stderr
	code := p.Run(args)
	return code, stdout.String(), stderr.String()
}

// pki writes quick-start certificates for node-a into a new directory.
func pki(t *testing.T) certs.Files {
	t.Helper()
	f, err := certs.Generate(certs.Options{Dir: filepath.Join(t.TempDir(), "pki"), Nodes: []certs.Node{{Name: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestArgs: every command line of tunnel-server and its commands either
// prints what was asked, or is refused on one line that names the
// argument or flag at fault (exit 2) — never silently ignored.
func TestArgs(t *testing.T) {
	f := pki(t)
	sock := filepath.Join(t.TempDir(), "s.sock")
	base := []string{"--agent-listen-address=127.0.0.1:0", "--admin-listen-address=", "--uds-path=" + sock,
		"--tls-cert-file=" + f.ServerCert, "--tls-private-key-file=" + f.ServerKey, "--agent-ca-file=" + f.CACert}
	with := func(extra ...string) []string { return append(append([]string{}, base...), extra...) }
	missing := filepath.Join(t.TempDir(), "absent")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // contained in stdout
		stderr string // stderr, exactly ("" for none)
	}{
		{"help", []string{"--help"}, 0, "\nCommands:\n  certs ", ""},
		{"help command", []string{"help"}, 0, "\nCommands:\n  certs ", ""},
		{"help certs", []string{"help", "certs"}, 0, "Usage:\n  tunnel-server certs --out DIR", ""},
		{"certs --help", []string{"certs", "--help"}, 0, "\nSSH flags:\n      --ssh ", ""},
		{"help demo", []string{"help", "demo"}, 0, "Usage:\n  tunnel-server demo [flags]", ""},
		{"demo -h", []string{"demo", "-h"}, 0, "--log-level string", ""},
		{"version", []string{"version"}, 0, "tunnel-server version ", ""},
		{"--version", []string{"--version"}, 0, "tunnel-server version ", ""},

		{"unknown command", []string{"serve"}, 2, "", "tunnel-server: unknown command \"serve\"; tunnel-server --help lists the commands\n"},
		{"help unknown command", []string{"help", "serve"}, 2, "", "tunnel-server help: unknown command \"serve\"; tunnel-server --help lists the commands\n"},
		{"stray argument", with("extra"), 2, "", "tunnel-server: unexpected argument \"extra\"; see tunnel-server --help\n"},
		{"command after flags", with("certs"), 2, "", "tunnel-server: unexpected argument \"certs\" (a command comes first: tunnel-server certs [flags]); see tunnel-server --help\n"},
		{"boolean with a separate value", with("--trust-agent-routes", "false"), 2, "",
			"tunnel-server: unexpected argument \"false\" (a boolean flag takes its value after '=', as in --name=false); see tunnel-server --help\n"},
		{"certs stray argument", []string{"certs", "--out", t.TempDir(), "extra"}, 2, "", "tunnel-server certs: unexpected argument \"extra\"; see tunnel-server certs --help\n"},
		{"demo stray argument", []string{"demo", "now"}, 2, "", "tunnel-server demo: unexpected argument \"now\"; see tunnel-server demo --help\n"},
		{"version stray argument", []string{"version", "2"}, 2, "", "tunnel-server version: unexpected argument \"2\"; see tunnel-server version --help\n"},
		{"help two commands", []string{"help", "certs", "demo"}, 2, "", "tunnel-server help: unexpected argument \"demo\"; see tunnel-server help --help\n"},
		{"unknown flag", with("--no-such-flag"), 2, "", "tunnel-server: unknown flag: --no-such-flag; see tunnel-server --help\n"},
		{"certs unknown flag", []string{"certs", "--uds-path=x"}, 2, "", "tunnel-server certs: unknown flag: --uds-path; see tunnel-server certs --help\n"},

		{"missing key file", with("--tls-private-key-file=" + missing), 2, "", "tunnel-server: --tls-private-key-file: private key " + missing + ": no such file or directory\n"},
		{"missing certificate file", with("--tls-cert-file=" + missing), 2, "", "tunnel-server: --tls-cert-file: certificate " + missing + ": no such file or directory\n"},
		{"key of another certificate", with("--tls-private-key-file=" + f.ClientKey), 2, "",
			"tunnel-server: --tls-private-key-file: private key " + f.ClientKey + ": does not match certificate " + f.ServerCert + "\n"},
		{"missing agent CA", with("--agent-ca-file=" + missing), 2, "", "tunnel-server: --agent-ca-file: CA bundle " + missing + ": no such file or directory\n"},
		{"missing SSH host key", with("--ssh-listen-address=127.0.0.1:0", "--ssh-host-key-file="+missing, "--ssh-user-ca-file="+missing), 2, "",
			"tunnel-server: --ssh-host-key-file: SSH private key " + missing + ": no such file or directory\n"},
		{"missing fallback key", with("--ssh-fallback-cidr=10.0.0.0/24", "--ssh-fallback-user=u", "--ssh-fallback-key-file="+missing, "--ssh-known-hosts-file="+missing), 2, "",
			"tunnel-server: --ssh-fallback-key-file: SSH private key " + missing + ": no such file or directory\n"},
		{"certs over existing files", []string{"certs", "--out", filepath.Dir(f.CACert)}, 2, "",
			"tunnel-server certs: --out: " + f.CACert + ": file already exists; refusing to overwrite key material\n"},
		{"certs node twice", []string{"certs", "--out", t.TempDir(), "--node", "a", "--node", "a"}, 2, "", "tunnel-server certs: --node: node \"a\" listed twice\n"},
		{"certs client proves a node", []string{"certs", "--out", t.TempDir(), "--client-name", "system:node:x"}, 2, "",
			"tunnel-server certs: --client-name: \"system:node:x\" starts with \"system:node:\", so it would prove a node\n"},
		{"certs bad node", []string{"certs", "--out", t.TempDir(), "--node", "a=1.2.3"}, 2, "",
			"tunnel-server certs: --node: node \"a=1.2.3\": bad IP: ParseAddr(\"1.2.3\"): IPv4 address too short\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tc.args...)
			if code != tc.code || stderr != tc.stderr || !strings.Contains(stdout, tc.stdout) {
				t.Errorf("tunnel-server %q: exit %d\nstdout %q\nstderr %q\nwant exit %d, stdout with %q, stderr %q",
					tc.args, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
			}
			if strings.Contains(stderr, "certs: certs:") || strings.Contains(stderr, ": certs: ") || strings.Contains(stderr, ": tunnel: ") {
				t.Errorf("stderr %q keeps a library's prefix", stderr)
			}
		})
	}
}

// serverFlagSet returns every flag of the server.
func serverFlagSet() *pflag.FlagSet {
	g := cli.NewFlagGroups(prog)
	setupServer(g, io.Discard)
	return g.Set()
}

// helpFlagRE matches a flag's line in --help ("      --name type   text").
var helpFlagRE = regexp.MustCompile(`(?m)^  (?:-[a-z], |    )--([a-z0-9-]+)( [^ ]+)?   `)

// TestHelpShowsEveryFlagOnce: --help lists each flag once, under a group
// heading, a boolean without a type or "=true" noise, and the commands.
func TestHelpShowsEveryFlagOnce(t *testing.T) {
	code, out, _ := run(t, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	seen := map[string]int{}
	for _, m := range helpFlagRE.FindAllStringSubmatch(out, -1) {
		seen[m[1]]++
	}
	fs := serverFlagSet()
	fs.VisitAll(func(f *pflag.Flag) {
		if seen[f.Name] != 1 {
			t.Errorf("--help lists --%s %d times", f.Name, seen[f.Name])
		}
		if f.Value.Type() == "bool" && !regexp.MustCompile(`\n      --`+f.Name+`   +[a-z]`).MatchString(out) {
			t.Errorf("--help does not show boolean --%s plainly", f.Name)
		}
	})
	for _, want := range []string{"help", "version"} {
		if seen[want] != 1 {
			t.Errorf("--help lists --%s %d times", want, seen[want])
		}
	}
	for _, bad := range []string{"=true", "true|false", "(default false)"} {
		if strings.Contains(out, bad) {
			t.Errorf("--help shows %q", bad)
		}
	}
	for _, heading := range []string{"Agent listener", "Frontend", "TLS", "Routing", "High availability", "SSH", "Limits", "Observability", "General"} {
		if strings.Count(out, "\n"+heading+" flags:\n") != 1 {
			t.Errorf("--help lacks the heading %q", heading+" flags:")
		}
	}
	for _, c := range []string{"certs", "demo", "help", "version"} {
		if !regexp.MustCompile(`\n  ` + c + ` +[a-z]`).MatchString(out) {
			t.Errorf("--help does not list command %s on a line of its own", c)
		}
	}
}

// TestCertsSSHPort: certs --ssh writes known_hosts for port 8135, which
// no other default takes: not the agent port, nor either admin port.
func TestCertsSSHPort(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	code, stdout, stderr := run(t, "certs", "--out", dir, "--node", "node-a", "--ssh")
	if code != 0 {
		t.Fatalf("certs --ssh: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, " "+filepath.Join(dir, "known_hosts")+" ") {
		t.Errorf("certs --ssh printed %q", stdout)
	}
	known, err := os.ReadFile(filepath.Join(dir, "known_hosts"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(known), "[localhost]:8135,") {
		t.Errorf("known_hosts = %q, want it for [localhost]:8135", known)
	}
	defaults := map[string]string{
		"--agent-listen-address":                serverFlagSet().Lookup("agent-listen-address").DefValue,
		"--admin-listen-address":                serverFlagSet().Lookup("admin-listen-address").DefValue,
		"tunnel-agent's --admin-listen-address": "127.0.0.1:8134", // cmd/tunnel-agent/ops.go; checked against the binary in TestFlagsNamedExist
	}
	for name, addr := range defaults {
		if strings.HasSuffix(addr, ":8135") {
			t.Errorf("%s defaults to %s, the SSH listener's port", name, addr)
		}
	}
}

// TestUDSModeWarning: a world-writable --uds-mode is allowed, with a
// warning that names the flag; others are not warned about.
func TestUDSModeWarning(t *testing.T) {
	for _, tc := range []struct {
		path, mode string
		warn       bool
	}{
		{"/s.sock", "0600", false},
		{"/s.sock", "0660", false},
		{"/s.sock", "0666", true},
		{"/s.sock", "0602", true},
		{"", "0666", false}, // no unix socket
	} {
		var buf bytes.Buffer
		f := serverFlags{udsPath: tc.path, uds: udsFlags{mode: tc.mode}}
		if err := f.checkUDS(slog.New(slog.NewTextHandler(&buf, nil))); err != nil {
			t.Fatal(err)
		}
		if warned := strings.Contains(buf.String(), "level=WARN") && strings.Contains(buf.String(), "flag=--uds-mode"); warned != tc.warn {
			t.Errorf("--uds-path=%q --uds-mode=%s: logged %q, want a warning: %v", tc.path, tc.mode, buf.String(), tc.warn)
		}
	}
	f := serverFlags{udsPath: "/s.sock", uds: udsFlags{mode: "999"}}
	if err := f.checkUDS(slog.New(slog.DiscardHandler)); err == nil || !strings.HasPrefix(err.Error(), "--uds-mode: ") {
		t.Errorf("--uds-mode=999: %v, want an error naming --uds-mode", err)
	}
}

// TestFlagsNamedExist: every --flag that a message or help text in the
// library (tunnel/..., certs) or in the binaries names is a flag of
// tunnel-server (or its certs command) or tunnel-agent, so that a
// rejection that says which flag would change it names a real one. And
// the agent's admin port is the one the SSH port was chosen apart from.
func TestFlagsNamedExist(t *testing.T) {
	agent := filepath.Join(t.TempDir(), "tunnel-agent")
	if out, err := exec.Command("go", "build", "-o", agent, "../tunnel-agent").CombinedOutput(); err != nil {
		t.Fatalf("go build tunnel-agent: %v\n%s", err, out)
	}
	out, err := exec.Command(agent, "--help").Output()
	if err != nil {
		t.Fatalf("tunnel-agent --help: %v", err)
	}
	exists := map[string]bool{}
	for _, m := range helpFlagRE.FindAllStringSubmatch(string(out), -1) {
		exists[m[1]] = true
	}
	if !exists["allow-cidr"] {
		t.Fatalf("found no --allow-cidr in tunnel-agent --help:\n%s", out)
	}
	serverFlagSet().VisitAll(func(f *pflag.Flag) { exists[f.Name] = true })
	certsFlags := cli.NewFlagGroups(prog + " certs")
	setupCerts(certsFlags, io.Discard)
	certsFlags.Set().VisitAll(func(f *pflag.Flag) { exists[f.Name] = true })
	exists["help"], exists["version"] = true, true

	named := map[string][]string{} // flag → files
	for _, dir := range []string{"../../tunnel", "../../certs", "../../cmd/tunnel-server", "../../cmd/tunnel-agent", "../../cmd/internal/admin"} {
		for flag, file := range flagsInStrings(t, dir) {
			named[flag] = append(named[flag], file)
		}
	}
	if len(named) < 20 {
		t.Fatalf("found only %d flags named in the sources: %v", len(named), named)
	}
	for flag, files := range named {
		if !exists[flag] {
			t.Errorf("--%s, named in %v, is not a flag of either binary", flag, files)
		}
	}
	if m := regexp.MustCompile(`--admin-listen-address string .*\(default "[^"]*:(\d+)"\)`).FindSubmatch(out); m == nil || string(m[1]) != "8134" {
		t.Errorf("tunnel-agent's --admin-listen-address port is %q, want 8134", m)
	}
}

// flagRE matches a flag's name in a string: "--allow-cidr", not "--tls-*".
var flagRE = regexp.MustCompile(`--([a-z][a-z0-9-]*)([*]?)`)

// flagsInStrings returns the flags named in the string literals of the
// non-test Go files under dir, each with a file that names it.
func flagsInStrings(t *testing.T, dir string) map[string]string {
	t.Helper()
	found := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		file, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(file, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				for _, m := range flagRE.FindAllStringSubmatch(lit.Value, -1) {
					if m[2] == "" && !strings.HasSuffix(m[1], "-") {
						found[m[1]] = path
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
