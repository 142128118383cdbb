package main

import (
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-project/tunnel/cmd/internal/admin"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

// Operations: the admin listener (metrics, health, pprof) and keepalive
// flags. main.go calls bindOps, and startAdmin before it runs the agent.

// runLoop names the agent's connect-serve-reconnect loop in /livez.
const runLoop = "run"

// adminAddr is the default --admin-listen-address: loopback, port 8134
// (the server's is 8133).
const adminAddr = "127.0.0.1:8134"

// bindOps adds the admin flags (Observability) and the keepalive flags
// (Server connection).
func (f *agentFlags) bindOps(g *cli.FlagGroups) {
	f.admin.Bind(g.Group(cli.GroupObservability), adminAddr)
	server := g.Group(groupServer)
	server.DurationVar(&f.cfg.KeepaliveInterval, "keepalive-interval", f.cfg.KeepaliveInterval, "how often to ping the server")
	server.DurationVar(&f.cfg.KeepaliveTimeout, "keepalive-timeout", f.cfg.KeepaliveTimeout, "how long a ping may go unanswered before the session is dropped and the agent reconnects")
}

// startAdmin starts the admin listener for agent, whose Run loop runs
// under the returned Loops.
func (f *agentFlags) startAdmin(reg *prometheus.Registry, agent *tunnel.Agent, log *slog.Logger) (*admin.Loops, *admin.Server, error) {
	loops := admin.NewLoops(runLoop)
	adm, err := admin.Start(f.admin, admin.NewHandler(reg, agentHealth(agent, loops), f.admin.Profiling), log)
	return loops, adm, err
}

// agentHealth: live while Run runs; ready while a session is registered.
func agentHealth(agent *tunnel.Agent, loops *admin.Loops) admin.Health {
	return admin.Health{
		Live: []admin.Check{admin.Ping, {Name: "running", Fn: loops.Check}},
		Ready: []admin.Check{{Name: "registered", Fn: func() error {
			if !agent.Registered() {
				return errors.New("no registered session with the server")
			}
			return nil
		}}},
	}
}
