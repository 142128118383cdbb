package deploy

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// invocation is one command line of our binaries written in a deploy file.
type invocation struct {
	where  string   // file and object, for messages
	binary string   // serverName or agentName
	args   []string // what follows the binary
}

// helpFlagRE matches a flag's line in pflag's usage text:
// "      --name type   text" or "  -x, --name ...".
var helpFlagRE = regexp.MustCompile(`(?m)^\s+(?:-[A-Za-z0-9], )?--([a-z0-9][a-z0-9-]*)`)

// helpFlags returns the flags `binary --help` lists.
func helpFlags(t *testing.T, binary string) map[string]bool {
	t.Helper()
	out, code := run(t, binPath(binary), "--help")
	if code != 0 {
		t.Fatalf("%s --help exited %d:\n%s", binary, code, out)
	}
	flags := map[string]bool{}
	for _, m := range helpFlagRE.FindAllStringSubmatch(out, -1) {
		flags[m[1]] = true
	}
	if len(flags) < 5 {
		t.Fatalf("found only %d flags in %s --help:\n%s", len(flags), binary, out)
	}
	return flags
}

// allInvocations returns every command line of our binaries in deploy/.
func allInvocations(t *testing.T) []invocation {
	t.Helper()
	invs := append(manifestInvocations(t), systemdInvocations(t)...)
	seen := map[string]bool{}
	for _, inv := range invs {
		seen[inv.binary] = true
	}
	if !seen[serverName] || !seen[agentName] {
		t.Fatalf("deploy/ starts %v; want both %s and %s", seen, serverName, agentName)
	}
	return invs
}

// TestDeployFlagsExist requires every flag that a manifest, systemd unit
// or environment file passes to our binaries to exist in the binary built
// from this tree, and the whole command line to parse (values included):
// each is run with --help appended, which pflag reaches only after parsing
// every flag before it.
func TestDeployFlagsExist(t *testing.T) {
	known := map[string]map[string]bool{
		serverName: helpFlags(t, serverName),
		agentName:  helpFlags(t, agentName),
	}
	missing := map[string][]string{} // "binary --flag" → where
	for _, inv := range allInvocations(t) {
		bad := false
		for _, a := range inv.args {
			name, ok := flagName(a)
			if !ok {
				t.Errorf("%s: argument %q: write flags as --name=value (or a bare --name for true)", inv.where, a)
				bad = true
				continue
			}
			if !known[inv.binary][name] {
				key := inv.binary + " --" + name
				missing[key] = append(missing[key], inv.where)
				bad = true
			}
		}
		if bad {
			continue
		}
		argv := append(append([]string{binPath(inv.binary)}, inv.args...), "--help")
		if out, code := run(t, argv...); code != 0 {
			t.Errorf("%s: %s does not accept its arguments (exit %d): %s", inv.where, inv.binary, code, firstLine(out))
		}
	}
	keys := make([]string, 0, len(missing))
	for k := range missing {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		where := slices.Compact(missing[k])
		t.Errorf("%s does not exist; passed by:\n\t%s", k, strings.Join(where, "\n\t"))
	}
}

// flagName returns the name of a "--name" or "--name=value" argument.
func flagName(arg string) (string, bool) {
	rest, ok := strings.CutPrefix(arg, "--")
	if !ok || rest == "" {
		return "", false
	}
	name, _, _ := strings.Cut(rest, "=")
	return name, name != ""
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

func TestFlagNameParsing(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		name string
		ok   bool
	}{
		{"--node-name=$(NODE_NAME)", "node-name", true},
		{"--trust-agent-routes", "trust-agent-routes", true},
		{"--uds-path=/a=b", "uds-path", true},
		{"-v", "", false},
		{"value", "", false},
		{"--", "", false},
		{"--=x", "", false},
	} {
		name, ok := flagName(tc.arg)
		if name != tc.name || ok != tc.ok {
			t.Errorf("flagName(%q) = %q, %v; want %q, %v", tc.arg, name, ok, tc.name, tc.ok)
		}
	}
	help := "Usage of x:\n      --agent-listen-address string   where\n  -v, --verbose[=true|false]   more\n      --dial-timeout duration   (default 10s)\n"
	var got []string
	for _, m := range helpFlagRE.FindAllStringSubmatch(help, -1) {
		got = append(got, m[1])
	}
	if want := []string{"agent-listen-address", "verbose", "dial-timeout"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("flags in help text: %q, want %q", got, want)
	}
}
