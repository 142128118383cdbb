package tunnel

import (
	"context"
	"testing"
	"time"
)

func TestOnRegisteredCalledPerSession(t *testing.T) {
	h := newHarness(t, nil)
	proxy := startRelay(t, h.agentAddr)
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
