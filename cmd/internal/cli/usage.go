package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"
)

// Flag groups both binaries share; each binary adds its own (Frontend,
// Routing, ...). --help lists every group under "<Name> flags:".
const (
	GroupTLS           = "TLS"
	GroupSSH           = "SSH"
	GroupObservability = "Observability"
	GroupGeneral       = "General" // --help, --version and what fits nowhere else
)

// FlagGroups are a command's flags by concern, as kube components show
// theirs: each group is a FlagSet of its own, listed under its heading in
// --help, and all of them are parsed together as one FlagSet (Set).
type FlagGroups struct {
	name   string
	groups []flagGroup
	set    *pflag.FlagSet // built by Set
}

type flagGroup struct {
	name string
	fs   *pflag.FlagSet
}

// NewFlagGroups returns the empty groups of the command name (as errors
// and --help name it: "tunnel-server", "tunnel-server certs").
func NewFlagGroups(name string) *FlagGroups { return &FlagGroups{name: name} }

// Name returns the command's name.
func (g *FlagGroups) Name() string { return g.name }

// Group returns the FlagSet of the group name, creating it after the
// groups that exist: the first call for each group fixes the order --help
// lists them in. Flags keep the order they are bound in.
func (g *FlagGroups) Group(name string) *pflag.FlagSet {
	for _, gr := range g.groups {
		if gr.name == name {
			return gr.fs
		}
	}
	if g.set != nil {
		panic("cli: group " + name + " added after the flags were merged")
	}
	fs := pflag.NewFlagSet(g.name+" "+name, pflag.ContinueOnError)
	fs.SortFlags = false
	g.groups = append(g.groups, flagGroup{name, fs})
	return fs
}

// Set returns every group's flags in one FlagSet, to parse the command
// line with and to look flags up in. The first call merges the groups; a
// flag bound in two groups panics, as pflag does for a flag bound twice.
func (g *FlagGroups) Set() *pflag.FlagSet {
	if g.set != nil {
		return g.set
	}
	g.set = pflag.NewFlagSet(g.name, pflag.ContinueOnError)
	g.set.SortFlags = false
	for _, gr := range g.groups {
		gr.fs.VisitAll(func(f *pflag.Flag) {
			if g.set.Lookup(f.Name) != nil {
				panic(fmt.Sprintf("cli: %s: flag --%s bound in two groups", g.name, f.Name))
			}
			g.set.AddFlag(f)
		})
	}
	return g.set
}

// Usage returns the flags as --help lists them: each group under its
// heading, one flag a line ("--name type   what it does (default x)"), the
// columns aligned within the group. A boolean shows no type and its
// default only when that is true.
func (g *FlagGroups) Usage() string {
	var b strings.Builder
	for _, gr := range g.groups {
		var lines [][2]string
		width := 0
		gr.fs.VisitAll(func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			left, right := flagUsage(f)
			width = max(width, len(left))
			lines = append(lines, [2]string{left, right})
		})
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s flags:\n", gr.name)
		for _, l := range lines {
			fmt.Fprintf(&b, "%-*s   %s\n", width, l[0], l[1])
		}
	}
	return b.String()
}

// flagUsage returns a flag's two columns: its name with shorthand and
// value type, and its usage with its default.
func flagUsage(f *pflag.Flag) (left, right string) {
	left = "      --" + f.Name
	if f.Shorthand != "" {
		left = "  -" + f.Shorthand + ", --" + f.Name
	}
	typ, usage := pflag.UnquoteUsage(f)
	isBool := f.Value.Type() == "bool"
	if !isBool && typ != "" {
		left += " " + typ
	}
	if def, ok := shownDefault(f, isBool); ok {
		usage += " (default " + def + ")"
	}
	return left, usage
}

// shownDefault returns the default --help shows for f: none for a zero
// value (false, "", 0, an empty list), strings quoted.
func shownDefault(f *pflag.Flag, isBool bool) (string, bool) {
	d := f.DefValue
	switch {
	case isBool:
		return d, d == "true"
	case f.Value.Type() == "string":
		return fmt.Sprintf("%q", d), d != ""
	}
	switch d {
	case "", "0", "0s", "[]", "false", "<nil>":
		return "", false
	}
	return d, true
}
