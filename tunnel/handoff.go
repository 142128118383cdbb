package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// The handoff socket: how a draining agent gives its tunnels to its
// successor on the same node (move.go). It is a unix socket of type
// SOCK_SEQPACKET at AgentConfig.HandoffSocket. Every agent listens there
// from its start, taking the path over from any agent before it, and
// stops listening when it begins to drain; a draining agent connects to
// the path, so it reaches the newest agent, never itself. Both ends check
// the other's credentials (SO_PEERCRED): the same user.
//
// Each packet is one JSON message (handoffMsg):
//
//	→ {"query":true}                                    which server replicas do you hold?
//	← {"servers":["3f2a9c0d1e4b5a69"]}
//	→ {"server":"3f2a…","dial":42,"address":"10.0.3.7:10250"} + the node socket (SCM_RIGHTS)
//	← {}  or  {"error":"…"}                             adopted, or why not (the socket is closed)
//
// The draining agent asks until the successor holds a session to the
// replica its tunnels belong to, then moves them one by one.

// moveEvery is how often a draining agent asks its successor which
// replicas it holds.
const moveEvery = 100 * time.Millisecond

// maxHandoffMsg bounds a handoff message; an address is at most 512 bytes.
const maxHandoffMsg = 4 << 10

type handoffMsg struct {
	Query   bool     `json:"query,omitempty"`
	Servers []string `json:"servers,omitempty"`
	Server  string   `json:"server,omitempty"`
	Dial    uint64   `json:"dial,omitempty"`
	Address string   `json:"address,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// successor is a draining agent's connection to the agent after it.
type successor struct {
	mu sync.Mutex
	c  *net.UnixConn
}

func (s *successor) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
}

// listenHandoff listens on the handoff socket until ctx ends, taking the
// path over from whatever was there: an older agent's socket, or a stale
// file.
func (a *Agent) listenHandoff(ctx context.Context) {
	path := a.cfg.HandoffSocket
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.log.Warn("handoff socket path not usable; no tunnels can be handed to this agent", "path", path, "err", err)
		return
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		a.log.Warn("cannot listen on the handoff socket; no tunnels can be handed to this agent", "path", path, "err", err)
		return
	}
	ln.SetUnlinkOnClose(false) // by then the path may be a newer agent's
	if err := os.Chmod(path, 0o600); err != nil {
		a.log.Warn("handoff socket: chmod", "path", path, "err", err)
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			if err := handoffPeer(c); err != nil {
				a.log.Warn("handoff socket: peer refused", "err", err)
				c.Close()
				continue
			}
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.serveHandoff(ctx, c)
			}()
		}
	}()
}

// serveHandoff answers a draining agent's messages until it hangs up or
// ctx ends.
func (a *Agent) serveHandoff(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		msg, fds, err := recvHandoff(c)
		if err != nil {
			closeFDs(fds)
			return
		}
		var reply handoffMsg
		switch {
		case msg.Query && ctx.Err() == nil: // a draining agent takes nothing, not even its own
			reply.Servers = a.sessionIDs()
		case msg.Query:
		case len(fds) != 1:
			closeFDs(fds)
			reply.Error = fmt.Sprintf("an offer carries one socket, not %d", len(fds))
		default:
			if err := a.adoptTunnel(msg, fds[0]); err != nil {
				reply.Error = err.Error()
				a.log.Warn("could not adopt a tunnel from the agent before this one", "dial", msg.Dial, "dest", msg.Address, "err", err)
			}
		}
		if err := sendHandoff(c, reply, -1); err != nil {
			return
		}
	}
}

// sessionIDs returns the replicas the agent serves sessions of.
func (a *Agent) sessionIDs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]string, 0, len(a.sessions))
	for id := range a.sessions {
		ids = append(ids, id)
	}
	return ids
}

// adoptTunnel takes over the node socket fd of tunnel msg.Dial: it asks
// msg.Server to carry the tunnel on a new stream (an adopt frame) and, if
// it agrees, carries it as its own. fd is closed on failure.
func (a *Agent) adoptTunnel(msg handoffMsg, fd int) error {
	f := os.NewFile(uintptr(fd), "handoff")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	node, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return errors.New("the socket is not a TCP connection")
	}
	if err := a.adopt(msg, node); err != nil {
		node.Close()
		return err
	}
	return nil
}

func (a *Agent) adopt(msg handoffMsg, node *net.TCPConn) error {
	a.mu.Lock()
	s := a.sessions[msg.Server]
	a.mu.Unlock()
	switch {
	case s == nil:
		return fmt.Errorf("no session to server %s", msg.Server)
	case !s.moves:
		return fmt.Errorf("server %s does not take moved tunnels", msg.Server)
	}
	ta, ok := node.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return errors.New("the socket has no peer")
	}
	dest := ta.AddrPort()
	if err := a.policy.check(dest.Addr().Unmap(), dest.Port()); err != nil { // this agent's policy may be newer
		return err
	}
	if !s.streams.begin(false) {
		return errors.New("this agent is draining too")
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.HandshakeTimeout)
	defer cancel()
	st, err := s.sess.Open(ctx, appendDialID(nil, frameAdopt, msg.Dial))
	if err == nil {
		st.SetReadDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
		var resp dialResponse
		if resp, err = readDialResponse(st); err == nil && resp.Result != ResultOK {
			err = fmt.Errorf("server refused: %s", resp.Message)
		}
		if err != nil {
			abort(st)
		}
	}
	if err != nil {
		s.streams.end()
		return err
	}
	st.SetReadDeadline(time.Time{})
	a.log.Debug("adopted a tunnel from the agent before this one", "dial", msg.Dial, "dest", msg.Address, "server_id", s.id)
	a.wg.Add(1)
	a.carry(s, st, node, msg.Dial, msg.Address, func() {
		s.streams.end()
		a.wg.Done()
	})
	return nil
}

// exchange sends msg, with the socket fd if fd ≥ 0, to the successor and
// returns its answer. It connects first if it must.
func (a *Agent) exchange(msg handoffMsg, fd int) (handoffMsg, error) {
	a.succ.mu.Lock()
	defer a.succ.mu.Unlock()
	if a.succ.c == nil {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: a.cfg.HandoffSocket, Net: "unixpacket"})
		if err != nil {
			return handoffMsg{}, err
		}
		if err := handoffPeer(c); err != nil {
			c.Close()
			return handoffMsg{}, err
		}
		a.succ.c = c
	}
	c := a.succ.c
	c.SetDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
	err := sendHandoff(c, msg, fd)
	var reply handoffMsg
	if err == nil {
		var fds []int
		reply, fds, err = recvHandoff(c)
		closeFDs(fds)
	}
	if err != nil {
		c.Close()
		a.succ.c = nil
	}
	return reply, err
}

// moveTunnels starts moving each of s's tunnels that can move, if the
// successor holds a session to s's replica, and returns how many.
func (a *Agent) moveTunnels(s *agentSession) int {
	if s.streams.count() == 0 {
		return 0
	}
	reply, err := a.exchange(handoffMsg{Query: true}, -1)
	if err != nil || !slices.Contains(reply.Servers, s.id) {
		return 0
	}
	var us []*tunnelUse
	s.open.mu.Lock()
	for u := range s.open.all {
		if u.m != nil && u.m.claim() {
			us = append(us, u)
		}
	}
	s.open.mu.Unlock()
	for _, u := range us {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.moveTunnel(s, u)
		}()
	}
	return len(us)
}

// moveTunnel is the old agent's steps 1 and 3 (move.go); carry hands the
// socket over once startPipe has moved the tunnel.
func (a *Agent) moveTunnel(s *agentSession, u *tunnelUse) {
	if !u.m.pause() {
		return
	}
	if err := s.tell(appendDialID(nil, frameMove, u.id), a.cfg.HandshakeTimeout); err != nil {
		abort(u.m.st)
		return
	}
	t := time.NewTimer(a.cfg.HandshakeTimeout)
	defer t.Stop()
	select {
	case <-u.m.done:
	case <-t.C:
		a.log.Warn("the server did not answer a move in time; closing the tunnel", "dial", u.id, "dest", u.addr, "timeout", a.cfg.HandshakeTimeout)
		abort(u.m.st)
	}
}

// handOff passes a moved tunnel's node socket to the successor, and
// closes the agent's own.
func (a *Agent) handOff(s *agentSession, u *tunnelUse, node net.Conn) {
	defer node.Close()
	msg := handoffMsg{Server: s.id, Dial: u.id, Address: u.addr}
	var reply handoffMsg
	rc, err := node.(syscall.Conn).SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) { reply, err = a.exchange(msg, int(fd)) })
		err = errors.Join(err, cerr)
	}
	if err == nil && reply.Error != "" {
		err = errors.New(reply.Error)
	}
	if err != nil {
		a.metrics.handoffs.WithLabelValues("failed").Inc()
		a.log.Warn("tunnel not handed to the successor; closed", "dial", u.id, "dest", u.addr, "err", err)
		return
	}
	a.metrics.handoffs.WithLabelValues("moved").Inc()
	a.log.Debug("tunnel handed to the successor", "dial", u.id, "dest", u.addr)
}

func sendHandoff(c *net.UnixConn, msg handoffMsg, fd int) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	var oob []byte
	if fd >= 0 {
		oob = syscall.UnixRights(fd)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// recvHandoff reads one message and the descriptors it carries, which the
// caller must close or use even when err is not nil.
func recvHandoff(c *net.UnixConn) (handoffMsg, []int, error) {
	buf := make([]byte, maxHandoffMsg)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var fds []int
	if cmsgs, perr := syscall.ParseSocketControlMessage(oob[:oobn]); perr == nil {
		for i := range cmsgs {
			if f, err := syscall.ParseUnixRights(&cmsgs[i]); err == nil {
				fds = append(fds, f...)
			}
		}
	}
	var msg handoffMsg
	switch {
	case err != nil:
	case n == 0:
		err = io.EOF
	case flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0:
		err = errors.New("handoff message too large")
	default:
		err = json.Unmarshal(buf[:n], &msg)
	}
	return msg, fds, err
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}
