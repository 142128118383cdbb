package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// The SSH transport (PROTOCOL.md, "SSH transport") carries the same
// protocol as TLS + yamux over one SSH connection that the agent dials:
//
//	TCP → SSH (agent authenticates by key or user certificate, verifies the
//	server's host key) → channels
//	  ├─ "tunnel-control@tunnel-project", opened by the agent: the control stream
//	  └─ "tunnel-dial@tunnel-project", opened by the server: one per dial
//
// Keepalive pings are global requests of type sshPingRequest with
// want-reply set. Every other channel type and request is refused.
//
// golang.org/x/crypto/ssh fixes each channel's receive window at 2 MiB and
// its largest packet at 32 KiB (channel.go: channelWindowSize,
// channelMaxPacket) and offers no setting for either, so neither is tuned
// here; its default cipher preference already starts with AES-128-GCM,
// the fastest on CPUs with AES instructions.

// SSH channel and request types of the tunnel protocol.
const (
	sshControlChannel = "tunnel-control@tunnel-project"
	sshDialChannel    = "tunnel-dial@tunnel-project"
	sshPingRequest    = "tunnel-ping@tunnel-project"
)

// TransportTLS and TransportSSH are the Identity.Transport values of the
// agent transports (and the transport label of the metrics that carry one).
const (
	TransportTLS         = "tls"
	TransportSSH         = "ssh"
	TransportSSHFallback = "ssh-fallback"
)

// sshAcceptQueue bounds the channels the agent has accepted that its
// accept loop has not yet taken.
const sshAcceptQueue = 64

// sshSession adapts an SSH connection to Session. The agent opens the
// control channel and accepts dial channels; the server the other way
// round, and it accepts exactly one channel, the control channel.
type sshSession struct {
	conn       ssh.Conn
	peer       Identity
	openType   string // the channel type this end opens
	acceptType string // the channel type this end accepts
	acceptOne  bool   // accept one channel only (the server's control channel)
	accepted   chan net.Conn
	done       chan struct{}
	wg         sync.WaitGroup // the session's own goroutines
}

// newSSHSession starts the goroutines that serve conn's incoming channels
// and requests and watch for its end. isServer picks the role.
func newSSHSession(conn ssh.Conn, chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request, peer Identity, isServer bool) *sshSession {
	s := &sshSession{conn: conn, peer: peer, accepted: make(chan net.Conn, sshAcceptQueue), done: make(chan struct{})}
	if isServer {
		s.openType, s.acceptType, s.acceptOne = sshDialChannel, sshControlChannel, true
	} else {
		s.openType, s.acceptType = sshControlChannel, sshDialChannel
	}
	s.wg.Add(3)
	go func() { defer s.wg.Done(); conn.Wait(); close(s.done) }()
	go func() { defer s.wg.Done(); s.serveChannels(chans) }()
	go func() { defer s.wg.Done(); serveSSHRequests(reqs) }()
	return s
}

// serveChannels accepts the channels this end expects, queues them for
// Accept, and refuses the rest.
func (s *sshSession) serveChannels(chans <-chan ssh.NewChannel) {
	taken := 0
	for nc := range chans {
		if nc.ChannelType() != s.acceptType {
			nc.Reject(ssh.UnknownChannelType, "unexpected channel type "+nc.ChannelType())
			continue
		}
		if s.acceptOne && taken > 0 {
			nc.Reject(ssh.Prohibited, "only one control channel per session")
			continue
		}
		ch, reqs, err := nc.Accept()
		if err != nil {
			continue
		}
		taken++
		go ssh.DiscardRequests(reqs) // ends when the channel closes
		select {
		case s.accepted <- s.stream(ch):
		case <-s.done:
			ch.Close()
		}
	}
}

// serveSSHRequests answers pings and refuses every other global request.
func serveSSHRequests(reqs <-chan *ssh.Request) {
	for r := range reqs {
		if r.WantReply {
			r.Reply(r.Type == sshPingRequest, nil)
		}
	}
}

func (s *sshSession) stream(ch ssh.Channel) *sshStream {
	return &sshStream{Channel: ch, sess: s}
}

// fail ends a connection that failed a write, and returns once Done is
// closed. x/crypto/ssh notices a dead connection only when its reader
// does, and ends every channel first: without this, a stream could fail
// while its session still looked alive and the agent routable.
func (s *sshSession) fail() {
	s.conn.Close()
	<-s.done
}

// Open opens a channel of this end's type and writes first on it; ctx
// bounds the wait for the peer's confirmation (a channel confirmed after
// ctx ended is closed).
func (s *sshSession) Open(ctx context.Context, first []byte) (net.Conn, error) {
	c, err := s.openCtx(ctx)
	if err == nil && len(first) > 0 {
		if _, err = c.Write(first); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, err
}

func (s *sshSession) openCtx(ctx context.Context) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ctx.Done() == nil {
		return s.open()
	}
	type result struct {
		c   net.Conn
		err error
	}
	res := make(chan result)
	s.wg.Add(1)
	go func() { // ends when the peer answers or the connection ends
		defer s.wg.Done()
		c, err := s.open()
		select {
		case res <- result{c, err}:
		case <-ctx.Done(): // Open has returned: the late channel is nobody's
			if c != nil {
				c.Close()
			}
		}
	}()
	select {
	case r := <-res:
		return r.c, r.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (s *sshSession) open() (net.Conn, error) {
	ch, reqs, err := s.conn.OpenChannel(s.openType, nil)
	if err != nil {
		if _, refused := err.(*ssh.OpenChannelError); !refused {
			s.fail()
		}
		return nil, fmt.Errorf("open ssh channel: %w", err)
	}
	go ssh.DiscardRequests(reqs)
	return s.stream(ch), nil
}

func (s *sshSession) Accept(ctx context.Context) (net.Conn, error) {
	select {
	case c := <-s.accepted:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// Close ends the connection, which ends every channel on it, and waits
// for the session's goroutines.
func (s *sshSession) Close() error {
	err := s.conn.Close()
	s.wg.Wait()
	for {
		select {
		case c := <-s.accepted:
			c.Close()
		default:
			return err
		}
	}
}

func (s *sshSession) Done() <-chan struct{} { return s.done }
func (s *sshSession) Peer() Identity        { return s.peer }

// Ping sends a ping request and waits for its reply. The connection is
// closed if ctx ends first, which also ends the request in flight.
func (s *sshSession) Ping(ctx context.Context) (time.Duration, error) {
	send := func() (time.Duration, error) {
		start := time.Now()
		ok, _, err := s.conn.SendRequest(sshPingRequest, true, nil)
		if err == nil && !ok {
			err = errors.New("ssh ping refused by peer")
		}
		return time.Since(start), err
	}
	return pingWithin(ctx, send, func() { s.conn.Close() })
}

// bindDeadline makes c's deadline ctx's, and ends it early if ctx is
// canceled, for handshakes that take no context; the returned function
// clears it.
func bindDeadline(ctx context.Context, c net.Conn) func() {
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		c.SetDeadline(time.Time{})
	}
}
