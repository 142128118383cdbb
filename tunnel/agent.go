package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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
	// SSH, if set, connects over SSH instead of TLS + yamux (ssh_auth.go);
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
	// agent's context ends (it has told the server to route nothing new to
	// it). Default 30s.
	DrainTimeout time.Duration
	// DrainIdle is how long, during a drain, a tunnel must have been quiet
	// since its node side last sent for the drain to close it as an idle
	// keep-alive (quiet.go). Default 3s.
	DrainIdle time.Duration
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

	sessionEnd atomic.Int32 // how the last session ended: endStable, endEarly, or 0 once Run has seen it

	mu      sync.Mutex
	held    map[string]int    // replica ID → the replica count it reports, for each replica held
	addrs   map[string]string // replica ID → the address it advertised (ha.go)
	want    int               // the highest count the replicas held report, at least 1
	changed chan struct{}     // closed and replaced when held or want changes
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
	a := &Agent{cfg: cfg, log: logger(cfg.Logger), tls: t,
		session: agentSessionConfig(cfg.KeepaliveTimeout, logger(cfg.Logger)),
		policy:  newDestPolicy(cfg.NodeIPs, cfg.PodCIDRs, cfg.AllowCIDRs, cfg.AllowPorts),
		held:    make(map[string]int), addrs: make(map[string]string), want: 1, changed: make(chan struct{})}
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
	defer a.wg.Wait()
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

// answeredFor reports whether the agent should stop trying the address of
// lost replica id after an attempt there (s on success, rej on a refusal):
// another replica answered at it, or the attempt failed with the backoff
// already at its maximum.
func (a *Agent) answeredFor(id string, s *agentSession, rej *RejectedError, backoff time.Duration) bool {
	answered := ""
	switch {
	case s != nil:
		answered = s.id
	case rej != nil:
		answered = rej.ServerID
	}
	if answered != "" && answered != id {
		return true
	}
	return s == nil && backoff == a.cfg.MaxBackoff
}

// nextAddress returns where to connect next: the advertised address of a
// replica the agent knows but does not hold (and its ID), or else
// ServerAddress (and "").
func (a *Agent) nextAddress() (addr, id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var lost []string
	for id := range a.addrs {
		if _, ok := a.held[id]; !ok {
			lost = append(lost, id)
		}
	}
	if len(lost) == 0 {
		return a.cfg.ServerAddress, ""
	}
	id = lost[rand.N(len(lost))]
	return a.addrs[id], id
}

// How a session ended, for Run's backoff.
const (
	endStable = 1 // after StableAfter: the backoff starts over
	endEarly  = 2 // before it: the backoff doubles
)

// runSession serves a registered session until it ends.
func (a *Agent) runSession(ctx context.Context, s *agentSession) {
	defer a.wg.Done()
	start := time.Now()
	err := a.serve(ctx, s)
	if ctx.Err() == nil {
		reason := "none given (the server's log says why)"
		if r := s.goodbye.Load(); r != nil {
			reason = *r
		}
		a.log.Warn("session ended", "server", s.addr, "server_id", s.id, "reason", reason, "err", err)
	}
	if time.Since(start) >= a.cfg.StableAfter {
		a.sessionEnd.Store(endStable)
	} else {
		a.sessionEnd.Store(endEarly)
	}
	a.update(func() { delete(a.held, s.id) }) // after sessionEnd: this wakes Run
}

// waitForGap blocks while the agent holds a session to every replica; it
// reports false if ctx ends first.
func (a *Agent) waitForGap(ctx context.Context) bool {
	for {
		a.mu.Lock()
		gap, changed := len(a.held) < a.want, a.changed
		a.mu.Unlock()
		if gap {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// update changes held (or addrs) under the lock, sets want to the highest
// count a replica held reports — one replica's low or stale count must not
// stop the agent from looking for the others; with none held the last want
// stays — and wakes waitForGap.
func (a *Agent) update(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f()
	if len(a.held) > 0 {
		a.want = max(slices.Max(slices.Collect(maps.Values(a.held))), 1)
	}
	close(a.changed)
	a.changed = make(chan struct{})
}

// heldIDs returns the IDs of the replicas the agent holds, for its hello.
func (a *Agent) heldIDs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]string, 0, len(a.held))
	for id := range a.held {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// remember keeps the address replica id advertised, to find it there if the
// session is lost; an address another replica had is that one's no more.
// Over SSH the agent only uses ServerAddress (its known_hosts names hosts).
func (a *Agent) remember(id, addr string) {
	for other, at := range a.addrs {
		if at == addr || other == id {
			delete(a.addrs, other)
		}
	}
	if _, _, err := net.SplitHostPort(addr); err == nil && a.cfg.SSH == nil {
		a.addrs[id] = addr
	}
}

// rememberPeers keeps the addresses of the other replicas that replica
// from knows of, to connect to them directly; a replica's word about
// itself (remember) wins over another's.
func (a *Agent) rememberPeers(from string, peers map[string]string) {
	for id, addr := range peers {
		if _, held := a.held[id]; id != from && !held {
			a.remember(id, addr)
		}
	}
}

// agentSession is a registered session to one server replica.
type agentSession struct {
	sess    Session
	ctrl    net.Conn
	id      string                 // the replica's server ID
	addr    string                 // where the agent reached it
	goodbye atomic.Pointer[string] // why the server said it ends the session, if it did
}

// connect dials addr and registers, naming the replicas the agent already
// holds; on success the session counts as held, and the address the
// replica advertises is remembered.
func (a *Agent) connect(ctx context.Context, addr string) (*agentSession, error) {
	hctx, cancel := context.WithTimeout(ctx, a.cfg.HandshakeTimeout)
	defer cancel()
	sess, err := a.dialSession(hctx, addr)
	if err != nil {
		return nil, err
	}
	ctrl, reply, err := a.hello(hctx, sess)
	if err == nil {
		a.update(func() {
			if _, ok := a.held[reply.ServerID]; ok { // defensive: the hello named every replica held, and only Run adds one
				err = &RejectedError{Reason: "already held", ServerID: reply.ServerID, Held: true}
				return
			}
			a.held[reply.ServerID] = reply.ServerCount
			a.remember(reply.ServerID, reply.Address)
			a.rememberPeers(reply.ServerID, reply.Peers)
		})
	}
	if err != nil {
		sess.Close()
		return nil, err
	}
	_, want := a.Servers()
	a.log.Info("registered", "node", a.cfg.NodeName, "server_id", reply.ServerID, "server", addr, "replicas", want)
	if a.cfg.OnRegistered != nil {
		a.cfg.OnRegistered()
	}
	return &agentSession{sess: sess, ctrl: ctrl, id: reply.ServerID, addr: addr}, nil
}

// serve runs a registered session until it ends: it accepts the server's
// dial streams, follows the replica count on the control stream, keeps the
// session alive and, when ctx ends, drains it.
func (a *Agent) serve(ctx context.Context, s *agentSession) error {
	sess := s.sess
	var streams inflight
	var open tunnelSet
	drained := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { defer close(drained); a.drain(sess, s.ctrl, &streams, &open) })
	defer func() {
		if !stop() { // the drain started: it ends with the session, closed below
			<-drained
		}
	}()
	done := make(chan struct{}, 2)
	defer func() { sess.Close(); <-done; <-done }()
	go func() {
		defer func() { done <- struct{}{} }()
		keepalive(sess, a.cfg.KeepaliveInterval, a.cfg.KeepaliveTimeout, a.metrics.keepaliveRTT, a.log.With("server", s.addr, "server_id", s.id))
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		a.followControl(s)
	}()
	for {
		st, err := sess.Accept(context.Background())
		if err != nil {
			return err
		}
		if !streams.begin() { // routed here before the server saw the drain
			a.respond(st, dialResponse{Result: ResultError, Message: "agent draining"})
			st.Close()
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer streams.end()
			a.serveStream(ctx, st, &open)
		}()
	}
}

// followControl reads s's control stream after registration: each
// replica-count frame is the count s's replica reports from then on, and a
// goodbye frame says why the server is ending the session. It returns when
// the stream ends (with the session).
func (a *Agent) followControl(s *agentSession) {
	for {
		typ, payload, err := readAnyFrame(s.ctrl)
		if err != nil {
			return
		}
		if typ == frameGoodbye {
			if reason := decodeGoodbye(payload); reason != "" {
				s.goodbye.Store(&reason)
				a.log.Info("the server is ending the session", "server", s.addr, "server_id", s.id, "reason", reason)
			}
			continue
		}
		if typ != frameReplicas {
			continue
		}
		r, err := decodeReplicaCount(payload)
		if err != nil {
			a.log.Warn("bad replica count from the server", "err", err)
			continue
		}
		a.log.Info("server replica count changed", "server_id", s.id, "replicas", r.ServerCount)
		a.update(func() {
			if _, ok := a.held[s.id]; ok {
				a.held[s.id] = r.ServerCount
			}
			a.rememberPeers(s.id, r.Peers)
		})
	}
}

// endedBeforeReply names the likely causes of a session the server ended
// before it answered the hello, and so before it could say why.
const endedBeforeReply = "the server ended the session before answering the hello; over TLS 1.3 a refused client certificate shows only here: " +
	"signed by a CA other than the server's --agent-ca-file, expired, or not for client auth. Otherwise the server restarted or hit a limit; its log says which"

// hello opens the control stream and registers; the stream stays open for
// the session's life, and hello returns it.
func (a *Agent) hello(ctx context.Context, sess Session) (net.Conn, HelloReply, error) {
	h := Hello{Version: ProtocolVersion, MinVersion: MinProtocolVersion, Node: a.cfg.NodeName, IPs: a.cfg.NodeIPs,
		PodCIDRs: a.cfg.PodCIDRs, DefaultRoute: a.cfg.DefaultRoute, Agent: "tunnel-agent", Held: a.heldIDs()}
	hello, err := appendJSONFrame(nil, frameHello, h)
	if err != nil {
		return nil, HelloReply{}, err
	}
	ctrl, err := sess.Open(ctx, hello) // the control stream opens with the hello
	if err != nil {
		return nil, HelloReply{}, fmt.Errorf("opening the control stream with the hello: %w (%s)", err, endedBeforeReply)
	}
	if d, ok := ctx.Deadline(); ok {
		ctrl.SetDeadline(d)
	}
	payload, err := readFrame(ctrl, frameHelloReply)
	if err != nil {
		return nil, HelloReply{}, fmt.Errorf("reading hello reply: %w (%s)", err, endedBeforeReply)
	}
	reply, err := decodeHelloReply(payload)
	if err != nil {
		return nil, reply, err
	}
	if reply.Error == "" && (reply.Version < MinProtocolVersion || reply.Version > ProtocolVersion) {
		return nil, reply, fmt.Errorf("server picked protocol version %d; this agent speaks %d to %d", reply.Version, MinProtocolVersion, ProtocolVersion)
	}
	if reply.Error != "" {
		return nil, reply, &RejectedError{Reason: reply.Error, ServerID: reply.ServerID, Held: reply.Held} // Run logs it
	}
	ctrl.SetDeadline(time.Time{})
	return ctrl, reply, nil
}

// serveStream answers one dial request and then carries its bytes, as one
// of open's tunnels.
func (a *Agent) serveStream(ctx context.Context, st net.Conn, open *tunnelSet) {
	st.SetReadDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
	payload, err := readFrame(st, frameDialRequest)
	if err != nil {
		a.log.Warn("bad dial request", "err", err)
		st.Close()
		return
	}
	req, err := decodeDialRequest(payload)
	if err != nil {
		a.metrics.dials.inc(ResultError)
		a.respond(st, dialResponse{Result: ResultError, Message: err.Error()})
		st.Close()
		return
	}
	st.SetReadDeadline(time.Time{})
	start := time.Now()
	target, err := a.dialWatched(ctx, st, req)
	a.metrics.dialTime.Observe(time.Since(start).Seconds())
	if err != nil {
		res := classifyDialError(err)
		a.metrics.dials.inc(res)
		if res == ResultForbidden {
			a.log.Warn("destination refused by policy", "dial", req.ID, "dest", req.Address, "err", err)
		} else {
			a.log.Info("dial failed", "dial", req.ID, "dest", req.Address, "result", res, "err", err)
		}
		a.respond(st, dialResponse{Result: res, Message: err.Error()})
		st.Close()
		return
	}
	a.metrics.dials.inc(ResultOK)
	if err := a.respond(st, dialResponse{Result: ResultOK}); err != nil {
		target.Close()
		st.Close()
		return
	}
	a.metrics.streamsOpen.Inc()
	defer a.metrics.streamsOpen.Dec()
	use, untrack := open.track(target)
	defer untrack()
	pipe(st, target, useCounter{a.metrics.toNode, use, false}, useCounter{a.metrics.fromNode, use, true})
}

// errServerGaveUp cancels a dial whose server stopped waiting for it.
var errServerGaveUp = errors.New("the server stopped waiting for this dial")

// dialWatched dials as dial does, and stops as soon as the server gives up
// on the dial — its caller went away (a gRPC DIAL_CLS, a canceled request)
// or its own timeout passed — which it shows by closing the stream before
// the answer. Nothing but the answer is sent before the answer, so a dial
// that runs longer than watchAfter has the stream watched for its end
// without reading (yamux streams; an SSH channel's dial runs to its own
// timeout).
func (a *Agent) dialWatched(ctx context.Context, st net.Conn, req dialRequest) (net.Conn, error) {
	wait := readWaiter(st)
	if wait == nil {
		return a.dial(ctx, req)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := lateWatch(func() {
		var ne net.Error
		if err := wait(); err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			cancel(errServerGaveUp)
		}
	}, func() { st.SetReadDeadline(time.Unix(1, 0)) }) // ends the wait
	c, err := a.dial(ctx, req)
	stop()
	st.SetReadDeadline(time.Time{})
	if errors.Is(context.Cause(ctx), errServerGaveUp) {
		if c != nil {
			c.Close()
		}
		return nil, context.Cause(ctx)
	}
	return c, err
}

func (a *Agent) respond(st net.Conn, r dialResponse) error {
	_, err := st.Write(appendDialResponse(nil, r))
	return err
}

// dial connects to the requested destination on the node's network: to
// the addresses destinations resolves and the policy allows, first to last
// until one answers.
func (a *Agent) dial(ctx context.Context, req dialRequest) (net.Conn, error) {
	timeout := a.cfg.MaxDialTimeout
	if req.Timeout > 0 {
		timeout = min(timeout, req.Timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addrs, err := a.destinations(ctx, req.Address)
	if err != nil {
		return nil, err
	}
	var first error
	for _, ap := range addrs {
		c, err := a.dialAddr(ctx, ap.String())
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

func (a *Agent) dialAddr(ctx context.Context, addr string) (net.Conn, error) {
	if a.cfg.Dial != nil {
		return a.cfg.Dial(ctx, "tcp", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}
