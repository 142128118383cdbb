package tunnel

import (
	"net"
	"sync"
	"testing"
)

// relay forwards TCP to a fixed address, as a network between agent and
// server would, and can fail like one: freeze makes every connection
// carried so far go silent — nothing more is forwarded either way, yet no
// socket is closed — which is what a peer behind a network that drops every
// packet looks like; cut closes them, as a broken network does. New
// connections are forwarded normally.
type relay struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	frozen chan struct{} // closed by freeze: the copies carried so far stop
	wg     sync.WaitGroup
}

func startRelay(t *testing.T, to string) *relay {
	p := &relay{ln: listenTCP(t, "127.0.0.1:0"), frozen: make(chan struct{})}
	p.wg.Add(1)
	go p.acceptLoop(to)
	t.Cleanup(func() {
		p.ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *relay) acceptLoop(to string) {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", to)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		frozen := p.frozen
		p.mu.Unlock()
		p.wg.Add(2)
		go p.forward(up, c, frozen)
		go p.forward(c, up, frozen)
	}
}

// forward copies src to dst until either fails or frozen is closed; once
// frozen it neither reads nor writes, and leaves both sockets open.
func (p *relay) forward(dst, src net.Conn, frozen chan struct{}) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-frozen:
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// freeze silences every connection carried so far, and makes later ones
// forward normally.
func (p *relay) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.frozen)
	p.frozen = make(chan struct{})
}

// cut closes every connection carried so far.
func (p *relay) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
