// Package lbtest is a TCP load balancer for tests and benchmarks of server
// replicas behind one address: each new connection goes to the next backend
// in turn, skipping one that refuses, and is forwarded both ways until
// either side closes, as a layer-4 balancer without session affinity does.
package lbtest

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Balancer forwards connections from its listener to its backends.
type Balancer struct {
	ln       net.Listener
	mu       sync.Mutex
	backends []string
	next     int
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

// Start listens on a free loopback port and balances over backends.
func Start(backends ...string) (*Balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &Balancer{ln: ln, backends: backends, conns: make(map[net.Conn]bool)}
	b.wg.Add(1)
	go b.acceptLoop()
	return b, nil
}

// Addr is the balancer's address.
func (b *Balancer) Addr() string { return b.ln.Addr().String() }

// Set replaces backend i (a replica that moved to another port, say).
func (b *Balancer) Set(i int, addr string) {
	b.mu.Lock()
	b.backends[i] = addr
	b.mu.Unlock()
}

// Close stops accepting, closes every connection carried and waits for the
// forwarding goroutines.
func (b *Balancer) Close() error {
	err := b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
	return err
}

// pick connects to the next backend that accepts, or returns nil.
func (b *Balancer) pick() net.Conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	for range b.backends {
		addr := b.backends[b.next%len(b.backends)]
		b.next++
		if up, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			return up
		}
	}
	return nil
}

func (b *Balancer) acceptLoop() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // out of file descriptors, say: as a real balancer, wait and go on
			time.Sleep(10 * time.Millisecond)
			continue
		}
		up := b.pick()
		if up == nil {
			c.Close()
			continue
		}
		b.mu.Lock()
		b.conns[c], b.conns[up] = true, true
		b.mu.Unlock()
		b.wg.Add(1)
		go b.forward(c, up)
	}
}

// forward copies both ways; when either direction ends, both connections
// close.
func (b *Balancer) forward(c, up net.Conn) {
	defer b.wg.Done()
	done := make(chan struct{})
	go func() { copyPlain(up, c); up.Close(); c.Close(); close(done) }()
	copyPlain(c, up)
	c.Close()
	up.Close()
	<-done
	b.mu.Lock()
	delete(b.conns, c)
	delete(b.conns, up)
	b.mu.Unlock()
}

// copyPlain copies src to dst through a small buffer of its own. io.Copy
// between two TCP connections would splice through a pipe — two more file
// descriptors per idle direction, which a fleet of thousands of sessions
// through one balancer cannot afford.
func copyPlain(dst io.Writer, src io.Reader) {
	buf := make([]byte, 8<<10)
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
}
