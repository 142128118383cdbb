package tunnel

import (
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// stuckListener hands out connections whose Close blocks until release is
// closed, as a TLS close_notify does toward a peer that never reads (up to
// five seconds in crypto/tls). reading signals a connection's first Read:
// its handler is running, so the server holds it.
type stuckListener struct {
	net.Listener
	release chan struct{}
	reading chan struct{}
}

func (l *stuckListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &stuckConn{Conn: c, l: l}, nil
}

type stuckConn struct {
	net.Conn
	l    *stuckListener
	read sync.Once
}

func (c *stuckConn) Read(p []byte) (int, error) {
	c.read.Do(func() { c.l.reading <- struct{}{} })
	return c.Conn.Read(p)
}

func (c *stuckConn) Close() error {
	<-c.l.release
	return c.Conn.Close()
}

// TestCloseWithAStuckPeer: a connection whose close waits on its peer
// holds up neither the other closes — an agent session, a frontend
// connection — nor the server's lock, and Close returns once it is done.
func TestCloseWithAStuckPeer(t *testing.T) {
	h := newHarness(t, nil)
	agent := h.startAgent(h.agentConfig("node-a"))
	plain, err := net.Dial("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	inner, err := ListenUnix(filepath.Join(t.TempDir(), "stuck.sock"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	stuck := &stuckListener{Listener: inner, release: make(chan struct{}), reading: make(chan struct{}, 1)}
	h.goServe(func() error { return h.srv.ServeConnect(stuck) })
	release := sync.OnceFunc(func() { close(stuck.release) })
	t.Cleanup(release) // before the harness closes the server, should the test fail
	peer, err := net.Dial("unix", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	<-stuck.reading

	closed := make(chan struct{})
	go func() { h.srv.Close(); close(closed) }()
	waitFor(t, "the agent's session to end", func() bool { return !agent.Registered() })
	if err := waitClosed(plain, 5*time.Second); err != nil {
		t.Errorf("frontend connection: %v", err)
	}
	tracked := make(chan bool, 1)
	go func() { tracked <- h.srv.track(t.Name(), func() error { return nil }) }()
	select {
	case ok := <-tracked:
		if ok {
			t.Error("track after Close reported the server open")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server's lock is held while a close waits on its peer")
	}
	select {
	case <-closed:
		t.Fatal("Close returned before the stuck connection closed")
	default:
	}
	release()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return once the stuck connection closed")
	}
}

// fakeNodes is a NodeSource that knows no node.
type fakeNodes struct{}

func (fakeNodes) Lookup(string) (NodeInfo, bool) { return NodeInfo{}, false }
func (fakeNodes) Count() int                     { return 0 }
func (fakeNodes) Notify(func(string))            {}

// stuckSession is a Session whose Close waits for release.
type stuckSession struct {
	Session
	closing chan struct{}
	release chan struct{}
}

func (s *stuckSession) Close() error {
	s.closing <- struct{}{}
	<-s.release
	return nil
}

// TestSyncNodeClosesOutsideLock: disconnecting a deleted node's agent,
// whose close waits on its peer, holds up no other node's sync.
func TestSyncNodeClosesOutsideLock(t *testing.T) {
	h := newHarness(t, func(c *ServerConfig) { c.Nodes = fakeNodes{} })
	sess := &stuckSession{closing: make(chan struct{}, 1), release: make(chan struct{})}
	release := sync.OnceFunc(func() { close(sess.release) })
	t.Cleanup(release)
	h.srv.routes.add(&agentConn{node: "gone", sess: sess})
	synced := make(chan struct{})
	go func() { h.srv.syncNode("gone"); close(synced) }()
	<-sess.closing
	if h.srv.routes.count() != 0 {
		t.Error("the deleted node's agent is still routed while its session closes")
	}
	other := make(chan struct{})
	go func() { h.srv.syncNode("other"); close(other) }()
	select {
	case <-other:
	case <-time.After(5 * time.Second):
		t.Fatal("a sync waited for another node's session to close")
	}
	release()
	<-synced
}
