package deploy

import (
	"fmt"
	"os"
	"path/filepath"
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
	return commandFlags(t, binary)
}

// commandFlags returns the flags `binary [subcommand] --help` lists.
func commandFlags(t *testing.T, binary string, subcommand ...string) map[string]bool {
	t.Helper()
	argv := append(append([]string{binPath(binary)}, subcommand...), "--help")
	out, code := run(t, argv...)
	if code != 0 {
		t.Fatalf("%q exited %d:\n%s", argv, code, out)
	}
	flags := map[string]bool{}
	for _, m := range helpFlagRE.FindAllStringSubmatch(out, -1) {
		flags[m[1]] = true
	}
	if len(flags) < 2 {
		t.Fatalf("found only %d flags in %q:\n%s", len(flags), argv, out)
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

// flagReference is the flag reference, relative to the repository root:
// one "## " section per command, each with tables whose rows start with
// the flags they describe.
const flagReference = "docs/flags.md"

// flagSections maps each "## " heading of flagReference to the command
// whose --help it documents.
var flagSections = map[string][]string{
	serverName:            {serverName},
	agentName:             {agentName},
	serverName + " certs": {serverName, "certs"},
	serverName + " demo":  {serverName, "demo"},
}

// tableFlagRE matches a flag in the first cell of a table row.
var tableFlagRE = regexp.MustCompile("`--([a-z0-9][a-z0-9-]*)")

// referenceFlags returns, for each "## " section of md, the flags its table
// rows start with (a row's first cell may name several); subsections
// ("### ") belong to their section. Rows before the first section are
// attributed to "".
func referenceFlags(md string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	section := ""
	for _, line := range strings.Split(md, "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = strings.TrimSpace(h)
			out[section] = map[string]bool{}
			continue
		}
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "|") || len(cells) < 3 {
			continue
		}
		for _, m := range tableFlagRE.FindAllStringSubmatch(cells[1], -1) {
			if out[section] == nil {
				out[section] = map[string]bool{}
			}
			out[section][m[1]] = true
		}
	}
	return out
}

// TestFlagReference requires docs/flags.md to describe exactly the flags
// each command's --help lists: none missing, none that no longer exists.
func TestFlagReference(t *testing.T) {
	md, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(flagReference)))
	if err != nil {
		t.Fatal(err)
	}
	documented := referenceFlags(string(md))
	for section, flags := range documented {
		if _, ok := flagSections[section]; !ok && len(flags) > 0 {
			t.Errorf("%s: section %q documents flags %v of no known command", flagReference, section, keys(flags))
		}
	}
	for section, argv := range flagSections {
		doc, ok := documented[section]
		if !ok {
			t.Errorf("%s has no section \"## %s\"", flagReference, section)
			continue
		}
		help := commandFlags(t, argv[0], argv[1:]...)
		for _, f := range keys(help) {
			if !doc[f] {
				t.Errorf("%s: --%s (in %s --help) is not in %s, section %q", section, f, strings.Join(argv, " "), flagReference, section)
			}
		}
		for _, f := range keys(doc) {
			if !help[f] {
				t.Errorf("%s, section %q: --%s is not a flag of %s", flagReference, section, f, strings.Join(argv, " "))
			}
		}
	}
}

func TestReferenceFlags(t *testing.T) {
	md := "# Flags\n| `--stray` | x |\n## a\n| flag | d |\n|---|---|\n| `--one`, `--two` | `--not-this` |\n" +
		"### sub\n| `--three` | x |\ntext `--nor-this`\n## b\n| `--four` |\n"
	got := referenceFlags(md)
	want := map[string][]string{"": {"stray"}, "a": {"one", "three", "two"}, "b": {"four"}}
	if len(got) != len(want) {
		t.Errorf("sections %v, want %v", got, want)
	}
	for s, flags := range want {
		if fmt.Sprint(keys(got[s])) != fmt.Sprint(flags) {
			t.Errorf("section %q: %v, want %v", s, keys(got[s]), flags)
		}
	}
}

// keys returns m's keys, sorted.
func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
