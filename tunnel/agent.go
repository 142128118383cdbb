package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-project/tunnel/tunnel/mux"
)

// AgentConfig configures an Agent. Start from DefaultAgentConfig.
type AgentConfig struct {
	// ServerAddress is the server's agent port, "host:port".
	ServerAddress string
	// TLS holds the agent's client certificate and the CA pool (RootCAs)
	// that verifies the server, or a VerifyConnection that does (as
	// certs.ClientTLS builds, to follow rotated files); ServerName defaults
	// to the address's host.
	TLS *tls.Config
	// SSH, if set, connects over SSH instead of TLS + yamux (ssh_dial.go);
	// TLS is then not used.
	SSH *AgentSSHConfig
	// NodeName is the node this agent serves; its certificate must prove it.
	NodeName string
	// NodeIPs are the node's addresses. Dials to NodeName go to the first.
	NodeIPs []netip.Addr
	// PodCIDRs are the node's pod ranges, routed here by longest prefix.
	PodCIDRs []netip.Prefix
	// DefaultRoute asks the server for every destination no other agent claims.
	DefaultRoute bool
	// AllowCIDRs are ranges the agent may dial besides its node IPs and pod
	// ranges (service IPs, say). Only a node IP or one of these lets a
	// loopback, link-local or metadata address through (policy.go).
	AllowCIDRs []netip.Prefix
	// AllowPorts, if not empty, are the only destination ports allowed.
	AllowPorts []uint16
	// ResolveNames lets the agent look up destination names other than
	// NodeName in the node's resolver (each address found is then checked
	// and dialed as above). Off by default: kube-apiserver dials IP:port for
	// pods, services, endpoints and webhooks behind Services, and a node
	// name for kubelets, which the agent answers with its first node IP
	// without a lookup; a name it would look up for the control plane is a
	// channel into the node's DNS. Turn it on for an agent that must reach
	// webhooks or APIServices configured by URL with a host name.
	ResolveNames bool
	// MaxDialTimeout caps the dial deadline the server asks for. Default 30s.
	MaxDialTimeout time.Duration
	// HandshakeTimeout bounds connecting, TLS and hello. Default 10s.
	HandshakeTimeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential wait between
	// reconnects. Defaults 500ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// StableAfter is how long a session must last for the backoff to reset.
	// Default 30s.
	StableAfter time.Duration
	// ProbeInterval is how often, on average, an agent that holds a session
	// to some replicas but not to all looks for the others through the
	// server address (ha.go); each wait is drawn between half and one and a
	// half times it, so a fleet's probes spread out. Default 10s.
	ProbeInterval time.Duration
	// DrainTimeout is how long tunnels in flight may go on after the
	// agent's context ends (it has told the server to route new dials to it
	// only when no other agent serves them). Default 30s.
	DrainTimeout time.Duration
	// DrainIdle is how long, during a drain, a tunnel must have been quiet
	// since its node side last sent for the drain to close it as an idle
	// keep-alive (quiet.go). Default 3s.
	DrainIdle time.Duration
	// HandoffSocket, if set, is the path of a unix socket on the node
	// through which a draining agent hands its open tunnels to the agent
	// started after it (handoff.go, move.go): a rollout then cuts no
	// connection. Its directory must be writable by the agent's user
	// only, and shared by the old and the new agent.
	HandoffSocket string
	// Dial, if set, replaces net.Dialer for reaching destinations (a
	// special network, or a test that must see which agent dialed).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives the agent's logs. Nil discards them.
	Logger *slog.Logger
	// KeepaliveInterval is how often the agent pings the server. Default 15s.
	KeepaliveInterval time.Duration
	// KeepaliveTimeout is how long a ping may go unanswered before the
	// server is taken for dead and the agent reconnects. Default 10s.
	KeepaliveTimeout time.Duration
	// Registerer receives the agent's metrics (metrics.go). Nil registers
	// them nowhere.
	Registerer prometheus.Registerer
	// OnRegistered, if set, is called each time a session registers, after
	// Registered turns true and before the session serves streams (a
	// service manager's readiness notification, say). It must not block.
	OnRegistered func()
}

// DefaultAgentConfig returns an AgentConfig with every default filled in.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{
		MaxDialTimeout:   30 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		DrainTimeout:     30 * time.Second,
		DrainIdle:        3 * time.Second,
		MinBackoff:       500 * time.Millisecond,
		MaxBackoff:       30 * time.Second,
		StableAfter:      30 * time.Second,
		ProbeInterval:    10 * time.Second,

		KeepaliveInterval: DefaultKeepaliveInterval,
		KeepaliveTimeout:  DefaultKeepaliveTimeout,
	}
}

// Validate reports the settings that cannot work, as *ConfigError values.
func (c *AgentConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.ServerAddress); err != nil {
		return &ConfigError{Field: "ServerAddress", Msg: fmt.Sprintf("%q is not host:port", c.ServerAddress)}
	}
	switch {
	case c.SSH != nil && c.SSH.validate() != nil:
		return c.SSH.validate()
	case c.SSH == nil && (c.TLS == nil || len(c.TLS.Certificates) == 0 && c.TLS.GetClientCertificate == nil):
		return &ConfigError{Field: "TLS", Msg: "a client certificate is required"}
	case c.SSH == nil && c.TLS.RootCAs == nil && c.TLS.VerifyConnection == nil:
		return &ConfigError{Field: "TLS", Msg: "a CA bundle to verify the server is required"}
	case c.NodeName == "":
		return &ConfigError{Field: "NodeName", Msg: "is required"}
	case c.MaxBackoff < c.MinBackoff:
		return &ConfigError{Field: "MaxBackoff", Msg: fmt.Sprintf("%s is less than MinBackoff %s", c.MaxBackoff, c.MinBackoff)}
	case slices.Contains(c.AllowPorts, 0):
		return &ConfigError{Field: "AllowPorts", Msg: "port 0 is not a destination port"}
	case slices.ContainsFunc(c.AllowCIDRs, func(p netip.Prefix) bool { return !p.IsValid() || p != p.Masked() }):
		return &ConfigError{Field: "AllowCIDRs", Msg: "every range must be a network address in CIDR form"}
	}
	return errors.Join(
		checkPositive("MaxDialTimeout", c.MaxDialTimeout),
		checkPositive("HandshakeTimeout", c.HandshakeTimeout),
		checkPositive("DrainTimeout", c.DrainTimeout),
		checkPositive("DrainIdle", c.DrainIdle),
		checkPositive("MinBackoff", c.MinBackoff),
		checkPositive("ProbeInterval", c.ProbeInterval),
		checkPositive("KeepaliveInterval", c.KeepaliveInterval),
		checkPositive("KeepaliveTimeout", c.KeepaliveTimeout))
}

// RejectedError is the server's refusal to register the agent.
type RejectedError struct {
	Reason   string
	ServerID string // the replica that refused
	// Held says the agent already holds a session to that replica: not a
	// failure, the answer to a probe for another replica (ha.go).
	Held bool
}

func (e *RejectedError) Error() string { return "registration rejected by server: " + e.Reason }

// Agent keeps a session to every server replica and dials on their behalf.
type Agent struct {
	cfg     AgentConfig
	log     *slog.Logger
	tls     *tls.Config
	session *mux.Config // of TLS sessions (transport.go)
	metrics *agentMetrics
	policy  *destPolicy    // which destinations may be dialed (policy.go)
	wg      sync.WaitGroup // sessions and their stream handlers
	workers *workers       // runs stream handlers and tunnel directions (workers.go)

	sessionEnd atomic.Int32 // how the last session ended: endStable, endEarly, or 0 once Run has seen it
	succ       successor    // the agent after this one, while draining (handoff.go)

	mu       sync.Mutex
	held     map[string]int           // replica ID → the replica count it reports, for each replica held
	sessions map[string]*agentSession // replica ID → the session serving it
	addrs    map[string]string        // replica ID → the address it advertised (ha.go)
	want     int                      // the highest count the replicas held report, at least 1
	changed  chan struct{}            // closed and replaced when held or want changes
}

// NewAgent validates cfg and returns an Agent ready to Run.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := cfg.TLS.Clone()
	if t == nil { // the SSH transport
		t = &tls.Config{}
	}
	t.MinVersion = tls.VersionTLS13
	if t.ServerName == "" {
		t.ServerName, _, _ = net.SplitHostPort(cfg.ServerAddress)
	}
	cfg.NodeName = strings.ToLower(cfg.NodeName)
	a := &Agent{cfg: cfg, log: logger(cfg.Logger), tls: t, workers: newWorkers(),
		session: agentSessionConfig(cfg.KeepaliveTimeout, logger(cfg.Logger)),
		policy:  newDestPolicy(cfg.NodeIPs, cfg.PodCIDRs, cfg.AllowCIDRs, cfg.AllowPorts),
		held:    make(map[string]int), sessions: make(map[string]*agentSession), addrs: make(map[string]string), want: 1, changed: make(chan struct{})}
	a.metrics = newAgentMetrics(func() (held, want int) {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.held), a.want
	})
	if err := register(cfg.Registerer, a.metrics.collectors()); err != nil {
		return nil, err
	}
	return a, nil
}

// Registered reports whether the agent holds a registered session now.
func (a *Agent) Registered() bool {
	held, _ := a.Servers()
	return held > 0
}

// Servers returns the number of server replicas the agent holds a
// registered session to, and the number of replicas the servers reported.
func (a *Agent) Servers() (held, want int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.held), a.want
}

// Run connects, serves and reconnects until ctx ends, then drains its
// sessions and waits for their streams. It returns nil after ctx ends.
//
// It connects whenever it holds fewer sessions than there are replicas.
// A replica it does not hold but knows the address of (advertised by the
// replica itself or by its peers) is tried there directly, with a jittered
// exponential backoff, until the backoff reaches its maximum or another
// replica answers there; then the address is forgotten. Otherwise it
// connects through ServerAddress: at once the first time, with the backoff
// while it holds no session, and about every ProbeInterval while it holds
// some (it still serves, and a fleet looking for a replica must not storm
// the others).
func (a *Agent) Run(ctx context.Context) error {
	defer a.succ.close() // after the drains' handoffs: deferred first, runs last
	defer a.workers.close()
	defer a.wg.Wait()
	if a.cfg.HandoffSocket != "" {
		a.listenHandoff(ctx)
	}
	backoff := a.cfg.MinBackoff
	for first := true; ; first = false {
		if !a.waitForGap(ctx) {
			return nil
		}
		addr, lostID := a.nextAddress()
		if !first {
			switch a.sessionEnd.Swap(0) {
			case endStable:
				backoff = a.cfg.MinBackoff
			case endEarly: // a server that ends sessions at once must not be hammered
				backoff = min(2*backoff, a.cfg.MaxBackoff)
			}
			held, _ := a.Servers()
			wait := backoff/2 + rand.N(backoff/2+1)
			if held > 0 && lostID == "" {
				wait = a.cfg.ProbeInterval/2 + rand.N(a.cfg.ProbeInterval+1)
			}
			a.log.Debug("connecting again", "server", addr, "in", wait.Round(time.Millisecond), "servers", held)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			a.metrics.reconnects.Inc()
		}
		s, err := a.connect(ctx, addr)
		var rej *RejectedError
		switch {
		case err == nil:
			a.wg.Add(1)
			go a.runSession(ctx, s)
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &rej) && rej.Held:
			a.log.Debug("reached a replica this agent already holds", "server", addr, "server_id", rej.ServerID)
		case errors.As(err, &rej):
			a.log.Error("server rejected registration", "server", addr, "node", a.cfg.NodeName, "reason", rej.Reason)
		default:
			a.log.Warn("connecting failed", "server", addr, "err", err)
		}
		if lostID != "" && a.answeredFor(lostID, s, rej, backoff) {
			a.log.Info("forgetting the address of a lost replica; looking for it through the server address", "server_id", lostID, "addr", addr)
			a.update(func() { delete(a.addrs, lostID) })
		}
		// A failure doubles the backoff; a replica answering "held" leaves
		// it alone (probes are paced by ProbeInterval).
		if err != nil && (rej == nil || !rej.Held) {
			backoff = min(2*backoff, a.cfg.MaxBackoff)
		}
	}
}

// How a session ended, for Run's backoff.
const (
	endStable = 1 // after StableAfter: the backoff starts over
	endEarly  = 2 // before it: the backoff doubles
)
