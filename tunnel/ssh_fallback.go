package tunnel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// The SSH fallback reaches nodes that have no agent yet the way the
// removed kube-apiserver tunneler did — through the node's own sshd, with
// a direct-tcpip channel per dial — but verifies host keys, keeps one SSH
// connection per node for every dial to it, pings it, and after a failed
// connect waits a jittered, doubling backoff before trying that node again
// (dials in the meantime fail at once with the last error). An agent that
// registers for a destination always wins: the fallback serves only dials
// for which no agent route exists.

// SSHFallbackConfig configures the fallback (Server.EnableSSHFallback).
type SSHFallbackConfig struct {
	// CIDRs are the node addresses the fallback serves: a dial to an IP in
	// one of them with no agent route goes to sshd on that IP.
	CIDRs []netip.Prefix
	// User is the login name on the nodes' sshd.
	User string
	// Signer is the server's private key (or certificate) for the nodes.
	Signer ssh.Signer
	// HostKeyCallback verifies each node's host key (knownhosts.New).
	// Required: host keys are always verified.
	HostKeyCallback ssh.HostKeyCallback
	// Port is the nodes' sshd port. Default 22.
	Port uint16
	// HandshakeTimeout bounds connecting to a node and the SSH handshake.
	// Default 10s.
	HandshakeTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed connect to a
	// node before the next attempt. Defaults 1s and 30s.
	MinBackoff, MaxBackoff time.Duration
	// KeepaliveInterval and KeepaliveTimeout: each connection is pinged
	// every interval and closed if a ping goes unanswered for the timeout.
	// Defaults 15s and 10s.
	KeepaliveInterval, KeepaliveTimeout time.Duration
}

func (c *SSHFallbackConfig) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Port == 0 {
		c.Port = 22
	}
	def(&c.HandshakeTimeout, 10*time.Second)
	def(&c.MinBackoff, time.Second)
	def(&c.MaxBackoff, 30*time.Second)
	def(&c.KeepaliveInterval, DefaultKeepaliveInterval)
	def(&c.KeepaliveTimeout, DefaultKeepaliveTimeout)
}

// Validate reports the first setting that cannot work, as a *ConfigError.
func (c *SSHFallbackConfig) Validate() error {
	switch {
	case len(c.CIDRs) == 0:
		return &ConfigError{Field: "SSHFallback.CIDRs", Msg: "at least one node range is required"}
	case c.User == "":
		return &ConfigError{Field: "SSHFallback.User", Msg: "is required"}
	case c.Signer == nil:
		return &ConfigError{Field: "SSHFallback.Signer", Msg: "a private key is required"}
	case c.HostKeyCallback == nil:
		return &ConfigError{Field: "SSHFallback.HostKeyCallback", Msg: "a known_hosts file to verify the nodes is required"}
	case c.MaxBackoff < c.MinBackoff:
		return &ConfigError{Field: "SSHFallback.MaxBackoff", Msg: "is less than MinBackoff"}
	}
	return nil
}

// EnableSSHFallback makes the server dial nodes in cfg.CIDRs through their
// sshd when no agent serves them. Call it before serving.
func (s *Server) EnableSSHFallback(cfg SSHFallbackConfig) error {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	f := &sshFallback{cfg: cfg, srv: s, nodes: make(map[netip.Addr]*fallbackNode)}
	if !s.track(f, f.close) {
		return net.ErrClosed
	}
	s.fallback.Store(f)
	return nil
}

// sshFallback holds one SSH connection per node.
type sshFallback struct {
	cfg SSHFallbackConfig
	srv *Server

	mu     sync.Mutex
	nodes  map[netip.Addr]*fallbackNode
	closed bool
	wg     sync.WaitGroup // each connection's watcher
}

// fallbackNode is one node's connection, or the state of reaching it.
type fallbackNode struct {
	client     *ssh.Client   // nil while not connected
	connecting chan struct{} // closed when a connect in progress ends
	err        error         // why the last connect failed
	retryAt    time.Time     // no new connect before this
	backoff    time.Duration // the wait after the next failure
}

func (f *sshFallback) covers(ip netip.Addr) bool {
	for _, p := range f.cfg.CIDRs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// connections is the number of open node connections.
func (f *sshFallback) connections() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, nd := range f.nodes {
		if nd.client != nil {
			n++
		}
	}
	return n
}

// dialFallback is s.dial's last resort: when pick found no agent (noAgent)
// and the host is a node address the fallback serves, it dials through
// that node's sshd; otherwise it returns noAgent.
func (s *Server) dialFallback(ctx context.Context, id uint64, host, addr string, noAgent error) (net.Conn, string, error) {
	f := s.fallback.Load()
	ip, err := netip.ParseAddr(host)
	if f == nil || err != nil || !f.covers(ip.Unmap()) || resultOf(noAgent) != ResultNoAgent {
		return nil, "", noAgent
	}
	ip = ip.Unmap()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	start := time.Now()
	c, err := f.dial(ctx, ip, addr)
	if err != nil { // Server.Dial logs it
		return nil, TransportSSHFallback + ":" + ip.String(), err
	}
	s.metrics.connectTime.Observe(time.Since(start).Seconds())
	s.metrics.streamsOpen.Inc()
	return &fallbackConn{Conn: c, srv: s}, TransportSSHFallback + ":" + ip.String(), nil
}

// dial opens a direct-tcpip channel to addr through ip's sshd.
func (f *sshFallback) dial(ctx context.Context, ip netip.Addr, addr string) (net.Conn, error) {
	client, err := f.client(ctx, ip)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &DialError{Result: ResultTimeout, Address: addr, Timeout: f.srv.cfg.DialTimeout}
		}
		return nil, &DialError{Result: ResultError, Address: addr, Detail: "ssh fallback: " + err.Error()}
	}
	c, err := client.DialContext(ctx, "tcp", addr)
	if err == nil {
		return c, nil
	}
	var oe *ssh.OpenChannelError
	switch {
	case errors.As(err, &oe):
		return nil, fallbackOpenError(oe, addr)
	case ctx.Err() != nil:
		return nil, &DialError{Result: ResultTimeout, Address: addr, Timeout: f.srv.cfg.DialTimeout}
	}
	client.Close() // the connection failed: the watcher forgets it
	return nil, &DialError{Result: ResultError, Address: addr, Detail: "ssh fallback: " + err.Error()}
}

// fallbackOpenError maps sshd's refusal of a direct-tcpip channel to a
// dial result. OpenSSH reports a failed connect as "Connection refused"
// and the like, with reason connect-failed, and a forwarding its
// configuration forbids as administratively prohibited.
func fallbackOpenError(oe *ssh.OpenChannelError, addr string) error {
	msg := strings.ToLower(oe.Message)
	switch {
	case oe.Reason == ssh.Prohibited:
		return &DialError{Result: ResultForbidden, Address: addr, Detail: "ssh fallback: sshd: " + oe.Message}
	case strings.Contains(msg, "refused"):
		return &DialError{Result: ResultRefused, Address: addr}
	case strings.Contains(msg, "timed out"):
		return &DialError{Result: ResultTimeout, Address: addr}
	case strings.Contains(msg, "unreachable"):
		return &DialError{Result: ResultUnreachable, Address: addr, Detail: "ssh fallback: sshd: " + oe.Message}
	}
	return &DialError{Result: ResultError, Address: addr, Detail: "ssh fallback: sshd: " + oe.Message}
}

// client returns ip's connection, connecting if there is none and the
// node is not in its backoff; concurrent dials share one connect.
func (f *sshFallback) client(ctx context.Context, ip netip.Addr) (*ssh.Client, error) {
	for {
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return nil, net.ErrClosed
		}
		n := f.nodes[ip]
		if n == nil {
			n = &fallbackNode{backoff: f.cfg.MinBackoff}
			f.nodes[ip] = n
		}
		switch {
		case n.client != nil:
			c := n.client
			f.mu.Unlock()
			return c, nil
		case n.connecting != nil:
			wait := n.connecting
			f.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		case time.Now().Before(n.retryAt):
			err := fmt.Errorf("%w (next attempt in %s)", n.err, time.Until(n.retryAt).Round(time.Millisecond))
			f.mu.Unlock()
			return nil, err
		}
		n.connecting = make(chan struct{})
		f.mu.Unlock()
		c, err := f.connect(ip)
		f.connected(ip, n, c, err)
	}
}

// connected records the outcome of a connect to ip.
func (f *sshFallback) connected(ip netip.Addr, n *fallbackNode, c *ssh.Client, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(n.connecting)
	n.connecting = nil
	if err == nil && f.closed {
		c.Close()
		err = net.ErrClosed
	}
	if err != nil {
		n.err = err
		n.retryAt = time.Now().Add(n.backoff/2 + rand.N(n.backoff/2+1))
		n.backoff = min(2*n.backoff, f.cfg.MaxBackoff)
		f.srv.log.Warn("ssh fallback: cannot reach node", "node", ip.String(), "err", err, "retry_in", time.Until(n.retryAt).Round(time.Millisecond))
		return
	}
	n.client, n.err, n.backoff = c, nil, f.cfg.MinBackoff
	f.srv.log.Info("ssh fallback: connected", "node", ip.String())
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.watch(ip, n, c)
	}()
}

// connect dials ip's sshd and completes the SSH handshake, verifying its
// host key.
func (f *sshFallback) connect(ip netip.Addr) (*ssh.Client, error) {
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(int(f.cfg.Port)))
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	cc := &ssh.ClientConfig{
		User:            f.cfg.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(f.cfg.Signer)},
		HostKeyCallback: f.cfg.HostKeyCallback,
		ClientVersion:   "SSH-2.0-tunnel-server",
	}
	stop := bindDeadline(ctx, raw)
	conn, chans, reqs, err := ssh.NewClientConn(raw, addr, cc)
	stop()
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("ssh %s: %w", addr, err)
	}
	return ssh.NewClient(conn, chans, reqs), nil
}

// watch pings c until it ends, closes it when a ping goes unanswered, and
// then forgets it so that the next dial reconnects.
func (f *sshFallback) watch(ip netip.Addr, n *fallbackNode, c *ssh.Client) {
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	t := time.NewTicker(f.cfg.KeepaliveInterval)
	defer t.Stop()
	for alive := true; alive; {
		select {
		case <-done:
			alive = false
		case <-t.C:
			alive = f.ping(c)
		}
	}
	c.Close()
	<-done
	f.mu.Lock()
	if n.client == c {
		n.client = nil
	}
	f.mu.Unlock()
	f.srv.log.Info("ssh fallback: connection ended", "node", ip.String())
}

// ping sends OpenSSH's keepalive request; any answer, even a refusal,
// proves the node alive. An unanswered ping closes c.
func (f *sshFallback) ping(c *ssh.Client) bool {
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.KeepaliveTimeout)
	defer cancel()
	_, err := pingWithin(ctx, func() (time.Duration, error) {
		_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
		return 0, err
	}, func() { c.Close() })
	if ctx.Err() != nil {
		f.srv.log.Warn("ssh fallback: keepalive unanswered; closing", "timeout", f.cfg.KeepaliveTimeout)
	}
	return err == nil
}

// close ends every node connection and waits for their watchers.
func (f *sshFallback) close() error {
	f.mu.Lock()
	f.closed = true
	for _, n := range f.nodes {
		if n.client != nil {
			n.client.Close()
		}
	}
	f.mu.Unlock()
	f.wg.Wait()
	return nil
}

// fallbackConn is a tunneled connection through a node's sshd. CloseWrite
// sends the channel's EOF; Close ends the server's count of the tunnel.
type fallbackConn struct {
	net.Conn
	srv  *Server
	once sync.Once
}

func (c *fallbackConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *fallbackConn) Close() error {
	c.once.Do(func() { c.srv.metrics.streamsOpen.Dec(); c.srv.tunnels.end() })
	return c.Conn.Close()
}
