package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// Program is a binary: its main command, which runs when the first
// argument is not a command's name, and its commands ("certs", "demo").
// Every program also has "help [COMMAND]" and "version", and takes
// -h/--help everywhere and --version on its main command.
//
// A command line that names an unknown command, or leaves an argument that
// no flag takes, is refused with a message that names it (exit code 2):
// nothing on a command line is ignored.
type Program struct {
	Name     string    // "tunnel-server"
	Summary  string    // what the binary does, a sentence or two for --help
	Main     Command   // runs with flags only
	Commands []Command // listed in --help in this order, before help and version

	// Version returns the build, for "version" and --version
	// ("version devel, commit abc123, go1.26.8").
	Version func() string

	Stdout, Stderr io.Writer // nil: os.Stdout, os.Stderr
}

// Command is the main command or one of the Program's commands.
type Command struct {
	Name     string // what selects it; empty for the main command
	Summary  string // one line in the command list
	Synopsis string // what follows the command in "Usage:", e.g. "--out DIR [flags]"

	// Setup binds the command's flags into g and returns the function that
	// runs the command once they are parsed. The command writes its output
	// to stdout (logs go to stderr).
	Setup func(g *FlagGroups, stdout io.Writer) (run func() error)
}

// The commands every Program has.
var (
	helpCommand = Command{Name: "help", Summary: "show this help, or a command's (help COMMAND)", Synopsis: "[COMMAND]"}
	versionCmd  = Command{Name: "version", Summary: "print version, commit and Go version"}
)

// Run runs the command args select and returns the exit code: 0 on
// success and for help, 2 for a mistake in the command line (printed on
// one line: "PROG: --flag: what is wrong"), 1 for any other failure.
func (p *Program) Run(args []string) int {
	cmd, args, err := p.command(args)
	if err != nil {
		return p.fail(p.Name, err)
	}
	name := p.commandName(cmd)
	g, run, b := p.flags(cmd)
	if err := Parse(g.Set(), args); err != nil {
		return p.fail(name, err)
	}
	rest := g.Set().Args()
	switch {
	case b.help:
		fmt.Fprint(p.stdout(), p.usage(cmd, g))
		return 0
	case cmd.Name == helpCommand.Name:
		return p.help(rest)
	}
	if err := p.noArgs(name, rest); err != nil {
		return p.fail(name, err)
	}
	if b.version || cmd.Name == versionCmd.Name {
		fmt.Fprintf(p.stdout(), "%s %s\n", p.Name, p.Version())
		return 0
	}
	return p.fail(name, run())
}

// builtin are the flags every command takes: --help, and on the main
// command --version.
type builtin struct{ help, version bool }

// flags binds cmd's flags, and the built-in ones, into new groups, and
// returns what runs cmd.
func (p *Program) flags(cmd Command) (*FlagGroups, func() error, *builtin) {
	g := NewFlagGroups(p.commandName(cmd))
	run := func() error { return nil }
	if cmd.Setup != nil {
		run = cmd.Setup(g, p.stdout())
	}
	b := &builtin{}
	general := g.Group(GroupGeneral)
	general.BoolVarP(&b.help, "help", "h", false, "show this help, then exit")
	if cmd.Name == "" && p.Version != nil {
		general.BoolVar(&b.version, "version", false, "print version, commit and Go version, then exit")
	}
	return g, run, b
}

// command returns the command args select and the arguments left for it.
func (p *Program) command(args []string) (Command, []string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return p.Main, args, nil
	}
	if c, ok := p.lookup(args[0]); ok {
		return c, args[1:], nil
	}
	return Command{}, nil, p.unknown(args[0])
}

// lookup finds a command by name, help and version included.
func (p *Program) lookup(name string) (Command, bool) {
	for _, c := range p.commands() {
		if c.Name == name {
			return c, true
		}
	}
	return Command{}, false
}

func (p *Program) commands() []Command {
	cs := append([]Command(nil), p.Commands...)
	cs = append(cs, helpCommand)
	if p.Version != nil {
		cs = append(cs, versionCmd)
	}
	return cs
}

func (p *Program) unknown(name string) error {
	return &FlagError{Msg: fmt.Sprintf("unknown command %q; %s --help lists the commands", name, p.Name)}
}

// help prints the usage of the program, or of the command args names.
func (p *Program) help(args []string) int {
	switch {
	case len(args) == 0:
		return p.Run([]string{"--help"})
	case len(args) > 1:
		return p.fail(p.Name+" help", p.noArgs(p.Name+" help", args[1:]))
	}
	if _, ok := p.lookup(args[0]); !ok {
		return p.fail(p.Name+" help", p.unknown(args[0]))
	}
	return p.Run([]string{args[0], "--help"})
}

// noArgs refuses arguments that no flag took. One that names a command
// came after flags: commands come first.
func (p *Program) noArgs(name string, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unexpected argument %q", args[0])
	if _, ok := p.lookup(args[0]); ok && name == p.Name {
		msg += fmt.Sprintf(" (a command comes first: %s %s [flags])", p.Name, args[0])
	} else if args[0] == "true" || args[0] == "false" {
		msg += " (a boolean flag takes its value after '=', as in --name=false)"
	}
	return &FlagError{Msg: msg + "; see " + name + " --help"}
}

func (p *Program) commandName(c Command) string {
	if c.Name == "" {
		return p.Name
	}
	return p.Name + " " + c.Name
}

// usage returns cmd's --help text.
func (p *Program) usage(cmd Command, g *FlagGroups) string {
	var b strings.Builder
	name := p.commandName(cmd)
	if cmd.Name == "" {
		fmt.Fprintf(&b, "%s\n\nUsage:\n  %s [flags]\n  %s COMMAND [flags]\n\nCommands:\n", p.Summary, name, name)
		cs := p.commands()
		width := 0
		for _, c := range cs {
			width = max(width, len(c.Name))
		}
		for _, c := range cs {
			fmt.Fprintf(&b, "  %-*s   %s\n", width, c.Name, c.Summary)
		}
	} else {
		fmt.Fprintf(&b, "%s %s: %s\n\nUsage:\n  %s %s\n", p.Name, cmd.Name, cmd.Summary, name, strings.TrimSpace(cmd.Synopsis+" [flags]"))
	}
	b.WriteString(g.Usage())
	if cmd.Name == "" {
		fmt.Fprintf(&b, "\nRun \"%s help COMMAND\" (or \"%s COMMAND --help\") for a command's flags.\n", name, name)
	}
	return b.String()
}

// fail prints err, if any, as "name: err" on one line, and returns the
// exit code: 0 without an error, 2 for a FlagError, 1 otherwise.
func (p *Program) fail(name string, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(p.stderr(), "%s: %s\n", name, Message(err))
	if fe := (*FlagError)(nil); errors.As(err, &fe) {
		return 2
	}
	return 1
}

func (p *Program) stdout() io.Writer {
	if p.Stdout == nil {
		return os.Stdout
	}
	return p.Stdout
}

func (p *Program) stderr() io.Writer {
	if p.Stderr == nil {
		return os.Stderr
	}
	return p.Stderr
}

// Parse parses args into fs without printing anything; a mistake is a
// FlagError that names the flag and points at --help.
func Parse(fs *pflag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	fs.Init(fs.Name(), pflag.ContinueOnError)
	fs.SortFlags = false
	if err := fs.Parse(args); err != nil {
		return &FlagError{Msg: err.Error() + "; see " + fs.Name() + " --help"} // pflag's text names the flag
	}
	return nil
}
