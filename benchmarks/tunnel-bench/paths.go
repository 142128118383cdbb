package main

import (
	"fmt"
	"strings"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// Path names, as the report and the progress lines spell them.
const (
	pathDirect = "direct"
	pathProbe  = "probe"
	pathTunnel = "tunnel"
)

// path is one way to the target that a test measures: a direct TCP
// connection, the probe, or the tunnel.
type path struct {
	name string
	d    benchmarks.Dialer
	// procs are the relays between the client and the target, whose CPU a
	// throughput run counts: none for the direct path.
	procs []proc
}

// paths returns the ways every repeat of a test measures, in the order it
// measures them: the baselines first, then the tunnel, so that each
// tunnel run sits right beside its baselines.
func (e *env) paths() []path {
	var ps []path
	if e.direct != nil {
		ps = append(ps, path{name: pathDirect, d: e.direct})
	}
	if e.probe != nil {
		ps = append(ps, path{name: pathProbe, d: e.probe, procs: e.probeProcs()})
	}
	return append(ps, path{name: pathTunnel, d: e.tunnel, procs: e.procs()})
}

// runs holds one figure per repeat for each path, by path name.
type runs map[string][]float64

// figure is the row of these runs: the tunnel's median against the
// direct baseline's and, where it ran, the probe's.
func (r runs) figure(test, cas, unit string, g *goal) figure {
	return newFigure(test, cas, unit, r[pathDirect], r[pathTunnel], g).withProbe(r[pathProbe])
}

// line formats the latest run of each path for a progress line, with the
// tunnel's ratio to each baseline.
func (r runs) line(unit string) string {
	last := func(name string) (float64, bool) {
		xs := r[name]
		if len(xs) == 0 {
			return 0, false
		}
		return xs[len(xs)-1], true
	}
	t, _ := last(pathTunnel)
	var parts, ratios []string
	for _, name := range []string{pathDirect, pathProbe} {
		if v, ok := last(name); ok {
			parts = append(parts, name+" "+formatValue(v, unit))
			if v > 0 {
				ratios = append(ratios, fmt.Sprintf("%.2f× %s", t/v, name))
			}
		}
	}
	s := strings.Join(append(parts, "tunnel "+formatValue(t, unit)), ", ")
	if len(ratios) > 0 {
		s += " (" + strings.Join(ratios, ", ") + ")"
	}
	return s
}
