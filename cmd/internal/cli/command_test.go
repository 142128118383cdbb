package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// testProgram is a program with a main command that takes --name and a
// boolean, and a command "make" that takes --out; each run is recorded.
func testProgram(ran *[]string) *Program {
	return &Program{
		Name:    "prog",
		Summary: "prog does things.",
		Main: Command{Setup: func(g *FlagGroups, _ io.Writer) func() error {
			name := g.Group("Things").String("name", "", "a name")
			g.Group("Things").Bool("on", false, "turn it on")
			return func() error {
				*ran = append(*ran, "main")
				if *name == "bad" {
					return &FlagError{Flag: "name", Msg: "is bad"}
				}
				if *name == "fail" {
					return errors.New("tunnel: it failed")
				}
				return nil
			}
		}},
		Commands: []Command{{Name: "make", Summary: "make a thing", Synopsis: "--out DIR",
			Setup: func(g *FlagGroups, stdout io.Writer) func() error {
				out := g.Group("Output").String("out", "", "where")
				return func() error {
					*ran = append(*ran, "make")
					fmt.Fprintf(stdout, "made %s\n", *out)
					return nil
				}
			}}},
		Version: func() string { return "version v1, commit c, go1" },
	}
}

// TestProgramArgs: every command line either runs its command, prints
// help or the version, or is refused on one line that names what is wrong
// and points at --help, with exit code 2. Nothing is ignored.
func TestProgramArgs(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		ran    string // the command run, if any
		stdout string // contained in stdout
		stderr string // stderr, exactly
	}{
		{nil, 0, "main", "", ""},
		{[]string{"--name", "x"}, 0, "main", "", ""},
		{[]string{"make", "--out", "d"}, 0, "make", "made d\n", ""},
		{[]string{"--help"}, 0, "", "Commands:\n  make      make a thing\n  help      show this help", ""},
		{[]string{"-h"}, 0, "", "Things flags:\n", ""},
		{[]string{"help"}, 0, "", "Usage:\n  prog [flags]\n  prog COMMAND [flags]\n", ""},
		{[]string{"help", "make"}, 0, "", "Usage:\n  prog make --out DIR [flags]\n", ""},
		{[]string{"make", "--help"}, 0, "", "Output flags:\n      --out string   where\n", ""},
		{[]string{"help", "help"}, 0, "", "Usage:\n  prog help [COMMAND] [flags]\n", ""},
		{[]string{"version"}, 0, "", "prog version v1, commit c, go1\n", ""},
		{[]string{"--version"}, 0, "", "prog version v1, commit c, go1\n", ""},
		{[]string{"help", "version"}, 0, "", "prog version: print version", ""},

		{[]string{"bogus"}, 2, "", "", "prog: unknown command \"bogus\"; prog --help lists the commands\n"},
		{[]string{"help", "bogus"}, 2, "", "", "prog help: unknown command \"bogus\"; prog --help lists the commands\n"},
		{[]string{"help", "make", "x"}, 2, "", "", "prog help: unexpected argument \"x\"; see prog help --help\n"},
		{[]string{"--name", "x", "stray"}, 2, "", "", "prog: unexpected argument \"stray\"; see prog --help\n"},
		{[]string{"--name", "x", "make"}, 2, "", "", "prog: unexpected argument \"make\" (a command comes first: prog make [flags]); see prog --help\n"},
		{[]string{"--on", "false"}, 2, "", "", "prog: unexpected argument \"false\" (a boolean flag takes its value after '=', as in --name=false); see prog --help\n"},
		{[]string{"--", "x"}, 2, "", "", "prog: unexpected argument \"x\"; see prog --help\n"},
		{[]string{"make", "x"}, 2, "", "", "prog make: unexpected argument \"x\"; see prog make --help\n"},
		{[]string{"make", "--out", "d", "x"}, 2, "", "", "prog make: unexpected argument \"x\"; see prog make --help\n"},
		{[]string{"version", "x"}, 2, "", "", "prog version: unexpected argument \"x\"; see prog version --help\n"},
		{[]string{"make", "--version"}, 2, "", "", "prog make: unknown flag: --version; see prog make --help\n"},
		{[]string{"--bogus"}, 2, "", "", "prog: unknown flag: --bogus; see prog --help\n"},
		{[]string{"make", "--out"}, 2, "", "", "prog make: flag needs an argument: --out; see prog make --help\n"},
		{[]string{"--on=maybe"}, 2, "", "", "prog: invalid argument \"maybe\" for \"--on\" flag: must be true or false; see prog --help\n"},
		{[]string{"--name", "bad"}, 2, "main", "", "prog: --name: is bad\n"},
		{[]string{"--name", "fail"}, 1, "main", "", "prog: it failed\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var ran []string
			var stdout, stderr bytes.Buffer
			p := testProgram(&ran)
			p.Stdout, p.Stderr = &stdout, &stderr
			code := p.Run(tc.args)
			if code != tc.code || stderr.String() != tc.stderr || !strings.Contains(stdout.String(), tc.stdout) {
				t.Errorf("Run(%q) = %d\nstdout %q\nstderr %q\nwant %d, stdout with %q, stderr %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
			}
			if got := strings.Join(ran, ","); got != tc.ran {
				t.Errorf("Run(%q) ran %q, want %q", tc.args, got, tc.ran)
			}
		})
	}
}

// TestHelpListsEveryCommand: the main --help lists each command on one
// line, help and version included, and points at per-command help.
func TestHelpListsEveryCommand(t *testing.T) {
	var stdout bytes.Buffer
	p := testProgram(new([]string))
	p.Stdout = &stdout
	if code := p.Run([]string{"--help"}); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	out := stdout.String()
	for _, c := range []string{"make", "help", "version"} {
		if n := strings.Count(out, "\n  "+c+" "); n != 1 {
			t.Errorf("--help lists command %s %d times:\n%s", c, n, out)
		}
	}
	if !strings.HasPrefix(out, "prog does things.\n") || !strings.Contains(out, `Run "prog help COMMAND"`) {
		t.Errorf("--help:\n%s", out)
	}
}
