package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os/user"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

// Limits and frontend access: the flags of the server's bounds (README
// "Limits") and of the unix socket's mode and group, which is checked, and
// warned about if world-writable, at start.

// udsFlags are the unix socket frontend's access flags.
type udsFlags struct {
	mode, group string
}

// bindUDS adds the unix socket access flags.
func (f *serverFlags) bindUDS(fs *pflag.FlagSet) {
	fs.StringVar(&f.uds.mode, "uds-mode", "0600", "file mode of the --uds-path socket, in octal; whoever can open it can reach every node")
	fs.StringVar(&f.uds.group, "uds-group", "", "group (name or ID) of the --uds-path socket, e.g. kube-apiserver's group with --uds-mode 0660 (default: the server's)")
}

// bindLimits adds the limit flags: timeouts, caps and rates.
func (f *serverFlags) bindLimits(fs *pflag.FlagSet) {
	fs.DurationVar(&f.cfg.DialTimeout, "dial-timeout", f.cfg.DialTimeout, "how long an agent may take to dial a destination")
	fs.DurationVar(&f.cfg.HandshakeTimeout, "handshake-timeout", f.cfg.HandshakeTimeout, "bound on an agent's TLS handshake and hello")
	fs.DurationVar(&f.cfg.HeaderTimeout, "connect-header-timeout", f.cfg.HeaderTimeout, "bound on reading a CONNECT request")
	fs.IntVar(&f.cfg.MaxHeaderBytes, "max-connect-header-bytes", f.cfg.MaxHeaderBytes, "bound on a CONNECT request's size; larger ones get 431")
	fs.IntVar(&f.cfg.MaxAgents, "max-agents", f.cfg.MaxAgents, "agent sessions registered at once; registrations beyond it are refused with the reason")
	fs.IntVar(&f.cfg.MaxStreamsPerAgent, "max-streams-per-agent", f.cfg.MaxStreamsPerAgent, "tunnels (dialing or open) on one agent; a dial beyond it gets 503")
	fs.IntVar(&f.cfg.MaxPendingDials, "max-pending-dials", f.cfg.MaxPendingDials, "dials in progress at once; a dial beyond it gets 503")
	fs.IntVar(&f.cfg.MaxAgentHandshakes, "max-agent-handshakes", f.cfg.MaxAgentHandshakes, "agent connections accepted and not yet registered (waiting for their first bytes or turn, in the handshake or hello); new ones beyond it are closed at once")
	fs.IntVar(&f.cfg.MaxFrontendConns, "max-frontend-connections", f.cfg.MaxFrontendConns, "frontend connections open at once, tunnels included, over all frontends; beyond it a CONNECT on the unix socket gets 503, TLS and gRPC connections are closed")
	fs.Var(cli.ByteSize{N: &f.cfg.SessionWindowBudget}, "session-window-budget", "bytes one agent session may make the server buffer: each stream's window is this over --max-streams-per-agent, clamped to 256Ki-16Mi")
	fs.Float64Var(&f.cfg.AgentAcceptRate, "agent-accept-rate", f.cfg.AgentAcceptRate, "agent handshakes the server starts per second, after a burst of --agent-accept-burst; a connection takes its turn once its first bytes arrive, and is closed before TLS if its turn is over a second away or its address already has a quarter second's worth waiting (0: no bound)")
	fs.IntVar(&f.cfg.AgentAcceptBurst, "agent-accept-burst", f.cfg.AgentAcceptBurst, "agent handshakes the server may start at once before --agent-accept-rate applies, e.g. a whole fleet reconnecting after a restart; a flood still averages --agent-accept-rate")
	fs.DurationVar(&f.cfg.ReplacedDrainTimeout, "replaced-drain-timeout", f.cfg.ReplacedDrainTimeout, "how long a session replaced by a newer one for the same node keeps its open tunnels before it is closed")
}

// checkUDS checks --uds-mode and warns if it lets every local user in.
func (f *serverFlags) checkUDS(log *slog.Logger) error {
	if f.udsPath == "" {
		return nil
	}
	mode, err := f.uds.fileMode()
	if err != nil {
		return err
	}
	if mode&0o002 != 0 {
		log.Warn("the unix socket is world-writable: every local user can reach every node through it", "flag", "--uds-mode",
			"mode", fmt.Sprintf("%04o", mode), "path", f.udsPath, "hint", "give kube-apiserver's group access instead: --uds-mode 0660 --uds-group GROUP")
	}
	return nil
}

// fileMode parses --uds-mode.
func (u *udsFlags) fileMode() (fs.FileMode, error) {
	mode, err := strconv.ParseUint(u.mode, 8, 32)
	if err != nil || mode > 0o777 {
		return 0, &cli.FlagError{Flag: "uds-mode", Msg: fmt.Sprintf("%q is not a file mode in octal, like 0600 or 0660", u.mode)}
	}
	return fs.FileMode(mode), nil
}

// listenUDS opens the unix socket frontend with the mode and group asked for.
func (f *serverFlags) listenUDS() (net.Listener, error) {
	mode, err := f.uds.fileMode()
	if err != nil {
		return nil, err
	}
	gid, err := lookupGroup(f.uds.group)
	if err != nil {
		return nil, cli.Blame("uds-group", err)
	}
	ln, err := tunnel.ListenUnixGroup(f.udsPath, mode, gid)
	if err != nil {
		flag := "uds-path"
		if gid >= 0 && isPermission(err) {
			flag = "uds-group"
		}
		return nil, cli.Blame(flag, err)
	}
	return ln, nil
}

// lookupGroup returns the ID of a group name or number; "" is -1, no change.
func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if id, err := strconv.Atoi(name); err == nil && id >= 0 {
		return id, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(g.Gid)
}

func isPermission(err error) bool { return errors.Is(err, fs.ErrPermission) }
