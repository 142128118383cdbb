package tunnel

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// tunnel_server_agents_connected{transport} counts agent sessions by the
// transport that carries them: TransportTLS, TransportSSH, and
// TransportSSHFallback for the server's own SSH connections to nodes
// without an agent (ssh_fallback.go). Three values at most, so the label
// is cheap. The tls series always exists; the others appear once used.

// agentsGauge is the collector of tunnel_server_agents_connected.
type agentsGauge struct {
	desc  *prometheus.Desc
	count func() map[string]int
}

func newAgentsGauge(count func() map[string]int) *agentsGauge {
	return &agentsGauge{
		desc: prometheus.NewDesc("tunnel_server_agents_connected",
			"Agent sessions registered now, by transport (tls, ssh; ssh-fallback: SSH connections the server holds to nodes without an agent).",
			[]string{"transport"}, nil),
		count: count,
	}
}

func (g *agentsGauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *agentsGauge) Collect(ch chan<- prometheus.Metric) {
	counts := g.count()
	if _, ok := counts[TransportTLS]; !ok {
		counts[TransportTLS] = 0
	}
	for _, t := range slices.Sorted(maps.Keys(counts)) {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(counts[t]), t)
	}
}

// agentsByTransport counts the registered agents by transport, and the
// fallback's open connections.
func (s *Server) agentsByTransport() map[string]int {
	counts := s.routes.countByTransport()
	if f := s.fallback.Load(); f != nil {
		if n := f.connections(); n > 0 {
			counts[TransportSSHFallback] = n
		}
	}
	return counts
}
