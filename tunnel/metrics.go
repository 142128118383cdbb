package tunnel

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics (DESIGN.md section 6). Each Server and Agent owns one set of
// collectors and registers them on the prometheus.Registerer of its config,
// so one process (a test) can run many of each. No series carries a node
// label: a 5,000-node cluster would make every one of them 5,000 wide.

// Label values of tunnel_{server,agent}_bytes_total{direction}.
const (
	DirectionToNode   = "to_node"   // toward the destination on the node
	DirectionFromNode = "from_node" // from the destination back to the control plane
)

// Label values of tunnel_server_dial_duration_seconds{stage}, the split
// kube-apiserver's own egress metrics use.
const (
	StageProxy   = "proxy"   // choosing the agent and opening a stream to it
	StageConnect = "connect" // from the dial request to the agent's answer
)

// Label values of tunnel_server_agent_rejections_total{reason}.
const (
	RejectHandshake = "handshake" // TLS handshake failed (no or bad client certificate, timeout)
	RejectHello     = "hello"     // no control stream, or no well-formed hello in time
	RejectVersion   = "version"   // a protocol version the server does not speak
	RejectIdentity  = "identity"  // the certificate does not prove the node name
	RejectRoutes    = "routes"    // IPs, pod CIDRs or default route the server will not accept
	RejectLimit     = "limit"     // the server holds MaxAgents sessions already
	RejectNode      = "node"      // the node source (ServerConfig.Nodes) knows no such node
)

var rejectReasons = []string{RejectHandshake, RejectHello, RejectVersion, RejectIdentity, RejectRoutes, RejectLimit, RejectNode}

// frontendCodes are the statuses the CONNECT frontend answers with; their
// series exist from the start, at zero.
var frontendCodes = []int{200, 400, 403, 405, 431, 502, 503, 504}

// Buckets, in seconds.
var (
	dialBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	rttBuckets  = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
)

// resultCounters holds one counter per dial result, created up front so that
// every result's series exists at zero and counting needs no label lookup.
type resultCounters [len(resultNames)]prometheus.Counter

func newResultCounters(vec *prometheus.CounterVec) *resultCounters {
	var rc resultCounters
	for i, name := range resultNames {
		rc[i] = vec.WithLabelValues(name)
	}
	return &rc
}

func (rc *resultCounters) inc(r Result) {
	if int(r) >= len(rc) {
		r = ResultError
	}
	rc[r].Inc()
}

// serverMetrics are a Server's collectors.
type serverMetrics struct {
	agents        prometheus.Collector // by transport (transport_metrics.go)
	registrations prometheus.Counter
	rejections    *prometheus.CounterVec
	streamsOpen   prometheus.Gauge
	dialsVec      *prometheus.CounterVec
	dials         *resultCounters
	durationVec   *prometheus.HistogramVec
	proxyTime     prometheus.Observer
	connectTime   prometheus.Observer
	bytesVec      *prometheus.CounterVec
	toNode        prometheus.Counter
	fromNode      prometheus.Counter
	frontendVec   *prometheus.CounterVec
	keepaliveRTT  prometheus.Histogram
	limits        *prometheus.CounterVec
	violations    *prometheus.CounterVec // agent sessions ended for what the agent sent (package mux)
	window        prometheus.Gauge
	replicas      prometheus.Gauge
	redundant     prometheus.Counter
	withAgent     prometheus.GaugeFunc
	known         prometheus.GaugeFunc
	moves         prometheus.Counter
}

// newServerMetrics creates a server's collectors; agents reports the number
// of registered agents when scraped, and coverage the nodes with an agent
// and the nodes known.
func newServerMetrics(agents func() map[string]int, coverage func() (withAgent, known int)) *serverMetrics {
	m := &serverMetrics{
		agents: newAgentsGauge(agents),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tunnel_server_agent_registrations_total", Help: "Agent registrations accepted.",
		}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_server_agent_rejections_total", Help: "Agent connections refused, by reason.",
		}, []string{"reason"}),
		streamsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tunnel_server_streams_open", Help: "Tunneled connections open now.",
		}),
		dialsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_server_dials_total", Help: "Tunneled dials, by result.",
		}, []string{"result"}),
		durationVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tunnel_server_dial_duration_seconds",
			Help:    "Dial latency by stage: proxy (choose the agent, open a stream), connect (dial request to the agent's answer).",
			Buckets: dialBuckets,
		}, []string{"stage"}),
		bytesVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_server_bytes_total", Help: "Tunneled bytes, by direction (to_node, from_node).",
		}, []string{"direction"}),
		frontendVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_server_frontend_requests_total", Help: "CONNECT requests answered, by HTTP status code.",
		}, []string{"code"}),
		keepaliveRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tunnel_server_keepalive_rtt_seconds", Help: "Round-trip time of keepalive pings to agents.", Buckets: rttBuckets,
		}),
		violations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_server_session_violations_total", Help: "Agent sessions ended because the agent broke the session protocol or flooded it, by kind (tunnel/mux).",
		}, []string{"kind"}),
		limits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_server_limit_rejections_total", Help: "Agents, dials and requests cut off by a limit, by limit (limits.go).",
		}, []string{"limit"}),
		window: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tunnel_server_stream_window_bytes", Help: "Receive window of each agent stream: the session window budget over the stream limit.",
		}),
		replicas: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tunnel_server_replicas", Help: "Server replicas sharing the agent address, this one included (--server-count or Leases).",
		}),
		redundant: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tunnel_server_agent_redundant_connections_total",
			Help: "Agent connections answered \"held\": the agent already holds a session to this replica and was looking for another one.",
		}),
		withAgent: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tunnel_server_nodes_with_agent", Help: "Nodes with at least one registered agent session.",
		}, func() float64 { n, _ := coverage(); return float64(n) }),
		known: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tunnel_server_nodes_known", Help: "Nodes the node source (--kubeconfig) knows; 0 without one.",
		}, func() float64 { _, n := coverage(); return float64(n) }),
		moves: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tunnel_server_tunnels_moved_total", Help: "Open tunnels a draining agent handed to its successor on the same node, adopted without a break (move.go).",
		}),
	}
	for _, l := range limitNames {
		m.limits.WithLabelValues(l)
	}
	m.dials = newResultCounters(m.dialsVec)
	m.proxyTime = m.durationVec.WithLabelValues(StageProxy)
	m.connectTime = m.durationVec.WithLabelValues(StageConnect)
	m.toNode = m.bytesVec.WithLabelValues(DirectionToNode)
	m.fromNode = m.bytesVec.WithLabelValues(DirectionFromNode)
	for _, r := range rejectReasons {
		m.rejections.WithLabelValues(r)
	}
	for _, c := range frontendCodes {
		m.frontendVec.WithLabelValues(strconv.Itoa(c))
	}
	return m
}

func (m *serverMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.agents, m.registrations, m.rejections, m.streamsOpen,
		m.dialsVec, m.durationVec, m.bytesVec, m.frontendVec, m.keepaliveRTT, m.limits, m.violations, m.window,
		m.replicas, m.redundant, m.withAgent, m.known, m.moves}
}

func (m *serverMetrics) frontendAnswered(code int) {
	m.frontendVec.WithLabelValues(strconv.Itoa(code)).Inc()
}

// agentMetrics are an Agent's collectors.
type agentMetrics struct {
	registered   prometheus.GaugeFunc
	servers      prometheus.GaugeFunc
	expected     prometheus.GaugeFunc
	streamsOpen  prometheus.Gauge
	dialsVec     *prometheus.CounterVec
	dials        *resultCounters
	dialTime     prometheus.Histogram
	bytesVec     *prometheus.CounterVec
	toNode       prometheus.Counter
	fromNode     prometheus.Counter
	reconnects   prometheus.Counter
	keepaliveRTT prometheus.Histogram
	handoffs     *prometheus.CounterVec
}

// newAgentMetrics creates an agent's collectors; servers reports the
// replicas the agent holds a registered session to, and how many there are.
func newAgentMetrics(servers func() (held, want int)) *agentMetrics {
	m := &agentMetrics{
		registered: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tunnel_agent_registered", Help: "1 while the agent holds a registered session, else 0.",
		}, func() float64 {
			if held, _ := servers(); held > 0 {
				return 1
			}
			return 0
		}),
		servers: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tunnel_agent_servers_connected", Help: "Server replicas the agent holds a registered session to.",
		}, func() float64 { held, _ := servers(); return float64(held) }),
		expected: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tunnel_agent_servers_expected", Help: "Server replicas there are, as the servers last reported.",
		}, func() float64 { _, want := servers(); return float64(want) }),
		streamsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tunnel_agent_streams_open", Help: "Tunneled connections open now.",
		}),
		dialsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_agent_dials_total", Help: "Dials of destinations on the node, by result.",
		}, []string{"result"}),
		dialTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tunnel_agent_dial_duration_seconds", Help: "Time to dial a destination on the node.", Buckets: dialBuckets,
		}),
		bytesVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_agent_bytes_total", Help: "Tunneled bytes, by direction (to_node: toward the destination).",
		}, []string{"direction"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tunnel_agent_reconnects_total", Help: "Connection attempts after the first, following a failed or ended session.",
		}),
		keepaliveRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tunnel_agent_keepalive_rtt_seconds", Help: "Round-trip time of keepalive pings to the server.", Buckets: rttBuckets,
		}),
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_agent_tunnel_handoffs_total", Help: "Open tunnels a draining agent tried to hand to its successor, by result (moved, failed).",
		}, []string{"result"}),
	}
	m.handoffs.WithLabelValues("moved")
	m.handoffs.WithLabelValues("failed")
	m.dials = newResultCounters(m.dialsVec)
	m.toNode = m.bytesVec.WithLabelValues(DirectionToNode)
	m.fromNode = m.bytesVec.WithLabelValues(DirectionFromNode)
	return m
}

func (m *agentMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.registered, m.servers, m.expected, m.streamsOpen, m.dialsVec, m.dialTime,
		m.bytesVec, m.reconnects, m.keepaliveRTT, m.handoffs}
}

// register registers cs on reg; a nil reg registers nothing (the collectors
// still count, unseen). On error it unregisters what it registered.
func register(reg prometheus.Registerer, cs []prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return &ConfigError{Field: "Registerer", Msg: err.Error()}
		}
	}
	return nil
}
