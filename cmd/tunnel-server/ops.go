package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-project/tunnel/cmd/internal/admin"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
	"github.com/tunnel-project/tunnel/tunnel"
)

// Operations: the admin listener (metrics, health, pprof), readiness and
// keepalive flags. main.go calls bindOps, and startAdmin once the
// listeners are open.

// opsFlags are the server's operational flags beyond its ServerConfig.
type opsFlags struct {
	admin            admin.Flags
	readyMinAgents   int
	readyMinCoverage float64
}

// adminAddr is the default --admin-listen-address: loopback, port 8133
// (the agent's is 8134, the agent port 8132, certs --ssh-port 8135).
const adminAddr = "127.0.0.1:8133"

// bindOps adds the admin and readiness flags (Observability) and the
// keepalive flags (Agent listener).
func (f *serverFlags) bindOps(g *cli.FlagGroups) {
	obs := g.Group(cli.GroupObservability)
	f.ops.admin.Bind(obs, adminAddr)
	obs.IntVar(&f.ops.readyMinAgents, "ready-min-agents", 1, "/readyz fails until at least this many agents are registered")
	obs.Float64Var(&f.ops.readyMinCoverage, "ready-min-coverage", 0, "with --kubeconfig, /readyz fails until this fraction (0-1) of the cluster's Nodes have an agent registered here (0: no check)")
	agents := g.Group(groupAgents)
	agents.DurationVar(&f.cfg.KeepaliveInterval, "keepalive-interval", f.cfg.KeepaliveInterval, "how often to ping each agent")
	agents.DurationVar(&f.cfg.KeepaliveTimeout, "keepalive-timeout", f.cfg.KeepaliveTimeout, "how long a ping may go unanswered before the agent is dropped and its routes removed")
}

// checkOps validates the operational flags and points cfg at reg.
func (f *serverFlags) checkOps(reg prometheus.Registerer) error {
	if f.ops.readyMinAgents < 0 {
		return &cli.FlagError{Flag: "ready-min-agents", Msg: fmt.Sprintf("must not be negative, not %d", f.ops.readyMinAgents)}
	}
	if !(f.ops.readyMinCoverage >= 0 && f.ops.readyMinCoverage <= 1) {
		return &cli.FlagError{Flag: "ready-min-coverage", Msg: fmt.Sprintf("must be a fraction from 0 to 1, not %v", f.ops.readyMinCoverage)}
	}
	if f.ops.readyMinCoverage > 0 && f.kube.kubeconfig == "" {
		return &cli.FlagError{Flag: "ready-min-coverage", Msg: "needs --kubeconfig: coverage is of the cluster's Nodes"}
	}
	f.cfg.Registerer = reg
	return nil
}

// startAdmin starts the admin listener for srv, whose listeners' serving
// loops run under loops. On error it closes the listeners.
func (f *serverFlags) startAdmin(reg *prometheus.Registry, srv *tunnel.Server, listeners []listener, log *slog.Logger) (*admin.Loops, *admin.Server, error) {
	names := make([]string, len(listeners))
	for i, l := range listeners {
		names[i] = l.name
	}
	loops := admin.NewLoops(names...)
	adm, err := admin.Start(f.ops.admin, admin.NewHandler(reg, serverHealth(srv, loops, f.ops), f.ops.admin.Profiling), log)
	if err != nil {
		for _, l := range listeners {
			l.ln.Close()
		}
	}
	return loops, adm, err
}

// serverHealth: live while every listener's loop runs; ready when, besides,
// at least --ready-min-agents agents are registered and, with
// --ready-min-coverage, that fraction of the known nodes has an agent.
func serverHealth(srv *tunnel.Server, loops *admin.Loops, ops opsFlags) admin.Health {
	serving := admin.Check{Name: "listeners", Fn: loops.Check}
	agents := admin.Check{Name: "agents", Fn: func() error {
		if n := srv.Agents(); n < ops.readyMinAgents {
			return fmt.Errorf("%d of at least %d agents registered", n, ops.readyMinAgents)
		}
		if ops.readyMinCoverage == 0 {
			return nil
		}
		withAgent, known := srv.Coverage()
		if known == 0 || float64(withAgent) < ops.readyMinCoverage*float64(known) {
			return fmt.Errorf("%d of %d known nodes have an agent here, want %.0f%% (--ready-min-coverage)", withAgent, known, 100*ops.readyMinCoverage)
		}
		return nil
	}}
	draining := admin.Check{Name: "not-draining", Fn: func() error {
		if srv.Draining() {
			return errors.New("draining: new CONNECTs get 503")
		}
		return nil
	}}
	return admin.Health{
		Live:  []admin.Check{admin.Ping, serving},
		Ready: []admin.Check{serving, agents, draining},
	}
}
