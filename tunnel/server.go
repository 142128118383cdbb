package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// ServerConfig configures a Server. Start from DefaultServerConfig.
type ServerConfig struct {
	// ID names this server replica in hello replies and logs. Replicas
	// sharing an agent address must have distinct IDs. Default: random.
	ID string
	// Replicas, if set, says how many servers share the agent address
	// (ha.go): FixedReplicas, or Kubernetes Leases (package tunnel/kube).
	// Agents keep a session to each. Nil: this server is alone.
	Replicas Replicas
	// AdvertiseAddress, if set, is this replica's own agent address
	// ("host:port", reachable by agents without the shared address):
	// agents that lose their session to it try there directly (ha.go).
	AdvertiseAddress string
	// AgentAcceptRate bounds the agent connections the server starts
	// handshakes for, per second, after a burst of AgentAcceptBurst. A
	// connection takes its turn once its first bytes arrive; one whose turn
	// is more than a second away is closed before TLS (accept.go). Zero: no
	// bound. Default 200.
	AgentAcceptRate float64
	// AgentAcceptBurst is how many handshakes may start at once before
	// AgentAcceptRate applies: a whole fleet reconnecting after a server
	// restart gets in at the speed of the CPU, while a flood's long-run
	// cost stays AgentAcceptRate handshakes a second. Default 5000.
	AgentAcceptBurst int
	// MaxAgentHandshakes bounds the agent connections accepted and not yet
	// registered or refused: waiting for their first bytes (up to 3s) or
	// their turn, in the handshake, or sending the hello. New connections
	// beyond it are closed at once. Default 4,096.
	MaxAgentHandshakes int
	// MaxFrontendConns bounds the frontend connections open at once (HTTP
	// CONNECT over the unix socket and TCP, and gRPC), tunnels included. A
	// connection beyond it gets 503 on the unix socket and is closed before
	// its handshake on TLS and gRPC. Default 32,768.
	MaxFrontendConns int
	// AgentTLS is the TLS configuration of the agent listener: the server
	// certificate and the CA pool (ClientCAs) that signs agent certificates.
	// The server enforces TLS 1.3 and verified client certificates on a copy.
	AgentTLS *tls.Config
	// TrustAgentRoutes accepts node IPs, pod CIDRs and the default route as
	// agents declare them, without proof from their certificates. Weaker:
	// a compromised node could attract another node's traffic.
	TrustAgentRoutes bool
	// Nodes, if set, is the record of the cluster's nodes that agents' routes
	// come from (nodes.go; tunnel-server --kubeconfig): an agent gets its
	// node's IPs, hostnames, pod CIDRs and default route, and what it
	// declares is only checked. Excludes TrustAgentRoutes. Nil: routes come
	// from certificates (and TrustAgentRoutes).
	Nodes NodeSource
	// DialTimeout bounds each tunneled dial on the node. Default 10s.
	DialTimeout time.Duration
	// HandshakeTimeout bounds an agent's TLS handshake and hello. Default 10s.
	HandshakeTimeout time.Duration
	// HeaderTimeout bounds reading a CONNECT request (and, on TCP, its TLS
	// handshake). Default 10s.
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds a CONNECT request's size. Default 8 KiB.
	MaxHeaderBytes int
	// MaxAgents bounds the agent sessions registered at once, replaced
	// sessions still draining included. Default 10,000.
	MaxAgents int
	// MaxStreamsPerAgent bounds the tunnels (dials in progress and open)
	// on one agent session. Default 1,024.
	MaxStreamsPerAgent int
	// MaxPendingDials bounds the dials in progress at once, server-wide.
	// Default 10,000.
	MaxPendingDials int
	// SessionWindowBudget bounds, in bytes, what one agent session can make
	// the server buffer: each stream's receive window is SessionWindowBudget
	// / MaxStreamsPerAgent, clamped to 256 KiB–16 MiB (limits.go). Default
	// 1 GiB, which gives the 1 MiB window with the default stream limit.
	SessionWindowBudget int64
	// ReplacedDrainTimeout is how long a session replaced by a newer one for
	// the same node keeps its open tunnels before it is closed. Default 60s.
	ReplacedDrainTimeout time.Duration
	// KeepaliveInterval is how often the server pings each agent. Default 15s.
	KeepaliveInterval time.Duration
	// KeepaliveTimeout is how long a ping may go unanswered before the
	// agent is taken for dead, its session closed and its routes removed.
	// Default 10s.
	KeepaliveTimeout time.Duration
	// Registerer receives the server's metrics (metrics.go). Nil registers
	// them nowhere.
	Registerer prometheus.Registerer
	// Logger receives the server's logs. Nil discards them.
	Logger *slog.Logger
}

// DefaultServerConfig returns a ServerConfig with every default filled in;
// the caller still supplies AgentTLS.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		DialTimeout:      10 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		HeaderTimeout:    10 * time.Second,
		MaxHeaderBytes:   8 << 10,

		MaxAgents:            10000,
		MaxStreamsPerAgent:   1024,
		MaxPendingDials:      10000,
		SessionWindowBudget:  1 << 30,
		ReplacedDrainTimeout: 60 * time.Second,
		AgentAcceptRate:      200,
		AgentAcceptBurst:     5000,
		MaxAgentHandshakes:   4096,
		MaxFrontendConns:     32768,

		KeepaliveInterval: DefaultKeepaliveInterval,
		KeepaliveTimeout:  DefaultKeepaliveTimeout,
	}
}

// Validate reports the first setting that cannot work, as a *ConfigError.
func (c *ServerConfig) Validate() error {
	switch {
	case c.AgentTLS == nil || len(c.AgentTLS.Certificates) == 0 && c.AgentTLS.GetCertificate == nil:
		return &ConfigError{Field: "AgentTLS", Msg: "a server certificate is required"}
	case c.AgentTLS.ClientCAs == nil && c.AgentTLS.GetConfigForClient == nil:
		return &ConfigError{Field: "AgentTLS", Msg: "a CA bundle to verify agent certificates is required"}
	case c.Nodes != nil && c.TrustAgentRoutes:
		return &ConfigError{Field: "TrustAgentRoutes", Msg: "cannot be set with Nodes: routes come from the node source"}
	case c.MaxHeaderBytes < 256:
		return &ConfigError{Field: "MaxHeaderBytes", Msg: "must be at least 256"}
	case c.AdvertiseAddress != "" && !isHostPort(c.AdvertiseAddress):
		return &ConfigError{Field: "AdvertiseAddress", Msg: fmt.Sprintf("%q is not host:port", c.AdvertiseAddress)}
	case c.AgentAcceptRate != 0 && !(c.AgentAcceptRate >= 1 && c.AgentAcceptRate <= 1e6):
		return &ConfigError{Field: "AgentAcceptRate", Msg: fmt.Sprintf("must be 0 (no bound) or from 1 to 1e6 per second, not %v", c.AgentAcceptRate)}
	case c.AgentAcceptRate != 0 && !(c.AgentAcceptBurst >= 1 && c.AgentAcceptBurst <= 1e6):
		return &ConfigError{Field: "AgentAcceptBurst", Msg: fmt.Sprintf("must be from 1 to 1e6, not %d", c.AgentAcceptBurst)}
	}
	return errors.Join(
		checkPositive("DialTimeout", c.DialTimeout),
		checkPositive("HandshakeTimeout", c.HandshakeTimeout),
		checkPositive("HeaderTimeout", c.HeaderTimeout),
		checkPositive("KeepaliveInterval", c.KeepaliveInterval),
		checkPositive("KeepaliveTimeout", c.KeepaliveTimeout),
		checkPositive("ReplacedDrainTimeout", c.ReplacedDrainTimeout),
		c.validateLimits())
}

// Server accepts agents' sessions, routes tunneled dials to them and serves
// the CONNECT frontend. Its zero value is not usable; call NewServer.
type Server struct {
	cfg      ServerConfig
	log      *slog.Logger
	agentTLS *tls.Config
	routes   *routes
	dialID   atomic.Uint64
	metrics  *serverMetrics
	window   uint32        // each agent stream's receive window (limits.go)
	sessions gate          // registered agent sessions
	pending  gate          // dials in progress
	accepts  *rate.Limiter // agent handshakes started (accept.go); nil: no bound
	turns    turnQueue     // agent connections waiting for a turn, by address
	agentCap connCap       // agent connections not yet registered (accept.go)
	frontCap connCap       // frontend connections
	refusing gate          // frontend connections being told they are over frontCap

	ctx    context.Context // ends at Close: handshakes and dials in progress stop
	cancel context.CancelFunc

	fallback atomic.Pointer[sshFallback] // nodes without an agent, over their sshd (ssh_fallback.go)
	nodeMu   sync.Mutex                  // orders node-source lookups with the rebinds they cause (nodes.go)

	mu      sync.Mutex
	open    map[any]func() error // listeners and connections to close on Close
	closed  bool
	wg      sync.WaitGroup
	workers *workers  // runs frontend connections and tunnel directions (workers.go)
	tunnels inflight  // dials in progress and tunnels open
	moves   sync.Map  // dial ID → *moving: open tunnels an agent may move (move.go)
	headers sync.Pool // *bufio.Reader of MaxHeaderBytes for CONNECT requests (frontend.go)
}

// NewServer validates cfg and returns a Server ready to Serve.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ID == "" {
		cfg.ID = randomID()
	}
	s := &Server{
		cfg:      cfg,
		workers:  newWorkers(),
		log:      logger(cfg.Logger),
		agentTLS: strictAgentTLS(cfg.AgentTLS),
		routes:   newRoutes(),
		open:     make(map[any]func() error),
		window:   cfg.streamWindow(),
		sessions: gate{max: int64(cfg.MaxAgents)},
		pending:  gate{max: int64(cfg.MaxPendingDials)},
		accepts:  newAcceptLimiter(cfg.AgentAcceptRate, cfg.AgentAcceptBurst),
		turns:    newTurnQueue(cfg.AgentAcceptRate),
		agentCap: connCap{gate: gate{max: int64(cfg.MaxAgentHandshakes)}, limit: LimitAgentHandshakes},
		frontCap: connCap{gate: gate{max: int64(cfg.MaxFrontendConns)}, limit: LimitFrontendConns},
		refusing: gate{max: maxRefusing},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.metrics = newServerMetrics(s.agentsByTransport, s.Coverage) // transport_metrics.go
	s.metrics.window.Set(float64(s.window))
	s.metrics.replicas.Set(float64(s.replicaCount()))
	if err := register(cfg.Registerer, s.metrics.collectors()); err != nil {
		return nil, err
	}
	if cfg.Nodes != nil {
		cfg.Nodes.Notify(s.syncNode) // nodes.go
	}
	if cfg.Replicas != nil {
		cfg.Replicas.Notify(s.replicasChanged) // ha.go; it does not block
	}
	return s, nil
}

// ID returns the server's replica ID.
func (s *Server) ID() string { return s.cfg.ID }

// Agents returns the number of registered agent sessions.
func (s *Server) Agents() int { return s.routes.count() }

// Coverage returns the number of nodes with a registered agent and, with a
// node source, the number of nodes it knows (else 0).
func (s *Server) Coverage() (withAgent, known int) {
	if s.cfg.Nodes != nil {
		known = s.cfg.Nodes.Count()
	}
	return s.routes.nodes(), known
}

// ServeAgents accepts agent connections on ln until ln or the server closes.
func (s *Server) ServeAgents(ln net.Listener) error {
	return s.serve(ln, &s.agentCap, nil, s.handleAgent)
}

// ServeConnect serves the HTTP CONNECT frontend on ln (a unix-socket
// listener, or a TLS listener requiring client certificates) until ln or the
// server closes.
func (s *Server) ServeConnect(ln net.Listener) error {
	return s.serve(ln, &s.frontCap, s.refuseFrontend, func(c net.Conn, _ func(), keep func() func()) { s.handleConnect(c, keep) })
}

// Shutdown drains the server: new dials fail at once with ResultDraining
// (the frontend answers 503), while dials in progress and open tunnels go
// on until they end or ctx ends; then it closes the server as Close does.
// It returns ctx's error if tunnels were still open when ctx ended.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	select {
	case <-s.tunnels.drain():
	case <-ctx.Done():
		err = fmt.Errorf("drain: %w", ctx.Err())
	}
	var wg sync.WaitGroup
	for _, a := range s.routes.all() {
		wg.Go(func() { s.sayGoodbye(a, "server "+s.cfg.ID+" shutting down") })
	}
	wg.Wait()
	s.Close()
	return err
}

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.tunnels.draining() }

// Tunnels returns the number of dials in progress and tunnels open.
func (s *Server) Tunnels() int { return s.tunnels.count() }

// serve runs an accept loop, handing each connection to handle in a
// goroutine the server owns, while cap has room for it (refuse answers
// one over it; nil closes it). handle gets a
// function that gives the connection's place back early, and goConn's
// keep; the place is given back when the connection's work ends in any
// case. The loop itself never waits for anything but Accept.
func (s *Server) serve(ln net.Listener, cap *connCap, refuse func(net.Conn), handle func(c net.Conn, release func(), keep func() (end func()))) error {
	if !s.track(ln, ln.Close) { // the server closed first: as if ln had
		return nil
	}
	defer s.untrack(ln)
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil { // out of file descriptors and the like: wait, retry
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "addr", ln.Addr().String(), "err", err, "in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.admitConn(cap, c, refuse) { // accept.go
			continue
		}
		release := sync.OnceFunc(cap.leave)
		if !s.goConn(c, release, func(keep func() func()) { handle(c, release, keep) }) {
			release()
			return nil
		}
	}
}

func randomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// WaitAgents blocks until at least n agents are registered or ctx ends.
func (s *Server) WaitAgents(ctx context.Context, n int) error {
	for {
		changed := s.routes.Changed()
		if s.routes.count() >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("tunnel: waiting for %d agents: %w", n, context.Cause(ctx))
		}
	}
}
