package main

import (
	"context"
	"fmt"
	"time"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// runFleet registers --fleet agents from this process against the server
// (benchmarks.RunFleet) and reports how long they took and what each
// costs the server in memory.
func (b *bench) runFleet(ctx context.Context) error {
	if err := b.env.fresh(ctx, b.say); err != nil {
		return err
	}
	o := b.fleetOptions()
	step := max(o.Agents/10, 1)
	shown := 0
	o.Progress = func(registered, total int) {
		if registered/step > shown/step || registered == total {
			shown = registered
			b.say("fleet: %d/%d agents registered", registered, total)
		}
	}
	res, err := benchmarks.RunFleet(ctx, o)
	if err != nil {
		return err
	}
	b.addFleet(res)
	return nil
}

// fleetOptions fills benchmarks.FleetOptions from the local run or from
// the --fleet-* flags.
func (b *bench) fleetOptions() benchmarks.FleetOptions {
	c := b.cfg
	o := benchmarks.FleetOptions{
		Server: c.fleetServer, ServerName: c.fleetServerName, CAFile: c.fleetCA,
		SignerCert: c.fleetSignerCert, SignerKey: c.fleetSignKey,
		Agents: c.fleet, Timeout: c.fleetTimeout,
	}
	serverPID := c.serverPID
	if l := b.env.local; l != nil {
		o.Server, o.ServerName, o.CAFile = l.agentAddr, "localhost", l.file("ca.crt")
		o.SignerCert, o.SignerKey = l.file("ca.crt"), l.file("ca.key")
		serverPID = l.server.pid()
	}
	if serverPID > 0 {
		o.ServerRSS = func() (float64, error) { return rssKiB(serverPID) }
	}
	return o
}

func (b *bench) addFleet(r benchmarks.FleetResult) {
	ms := func(d time.Duration) []float64 { return []float64{float64(d) / float64(time.Millisecond)} }
	cas := fmt.Sprintf("%d agents at once", r.Agents)
	b.add(newFigure(testFleet, cas+", registration p50", unitMillis, nil, ms(r.P50), nil))
	b.add(newFigure(testFleet, cas+", registration p99", unitMillis, nil, ms(r.P99), nil))
	b.add(newFigure(testFleet, cas+", until all registered", unitMillis, nil, ms(r.Total), nil))
	if r.ServerRSSAfterKiB > 0 {
		f := newFigure(testFleet, cas+", server RSS per agent", unitKiBAgent, nil, []float64{r.ServerKiBPerAgent}, nil)
		f.Extra = map[string]float64{"serverRSSBeforeKiB": r.ServerRSSBeforeKiB, "serverRSSAfterKiB": r.ServerRSSAfterKiB}
		b.add(f)
	}
}
