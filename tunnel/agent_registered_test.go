package tunnel

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// cutProxy forwards TCP to a fixed address and can cut every connection it
// carries, which ends an agent's session the way a network failure does.
type cutProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startCutProxy(t *testing.T, to string) *cutProxy {
	p := &cutProxy{ln: listenTCP(t, "127.0.0.1:0")}
	done := make(chan struct{})
	go func() { defer close(done); p.acceptLoop(to) }()
	t.Cleanup(func() { p.ln.Close(); p.cut(); <-done })
	return p
}

func (p *cutProxy) acceptLoop(to string) {
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
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

// cut closes every connection carried so far.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func TestOnRegisteredCalledPerSession(t *testing.T) {
	h := newHarness(t, nil)
	proxy := startCutProxy(t, h.agentAddr)
	cfg := h.agentConfig("node-a")
	cfg.ServerAddress = proxy.ln.Addr().String()
	registered := make(chan bool, 4)
	var agent *Agent
	cfg.OnRegistered = func() { registered <- agent.Registered() }
	agent, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); agent.Run(ctx) }()
	stop := func() { cancel(); <-done }
	defer func() {
		if ctx.Err() == nil {
			stop()
		}
	}()

	wait := func(what string) {
		t.Helper()
		select {
		case ok := <-registered:
			if !ok {
				t.Fatalf("%s: OnRegistered called while Registered() is false", what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: OnRegistered not called", what)
		}
	}
	wait("first session")
	proxy.cut()
	wait("after reconnecting")
	stop()
	select {
	case <-registered:
		t.Fatal("OnRegistered called more often than sessions registered")
	default:
	}
}
