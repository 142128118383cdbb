package tunnel

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestAgentPortShedsFlood: anyone can open TCP connections to the agent
// port. While a flood from another address runs at four times the
// handshake rate, a real agent's handshakes all complete: at once if the
// flood only connects (silent connections take no turn), after the flood
// address's short share of the queue if it sends bytes too. The flood is
// counted, and nothing is left behind (checkLeaks).
func TestAgentPortShedsFlood(t *testing.T) {
	const perSecond = 50
	for _, tt := range []struct {
		name    string
		talking bool          // flood connections send bytes
		worst   time.Duration // bound on a served handshake
	}{
		{"silent", false, acceptQueue / 2},
		{"talking", true, acceptQueue},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, reg := limitHarness(t, func(c *ServerConfig) { c.AgentAcceptRate, c.AgentAcceptBurst = perSecond, perSecond })
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				flood(h.agentAddr, 4*perSecond, tt.talking, stop)
			}()
			time.Sleep(time.Second) // let the flood build up a queue, if anything queues
			took, shed := handshakes(h, 10, 100*time.Millisecond)
			close(stop)
			wg.Wait()
			t.Logf("valid handshakes under the flood: %d of 10 served, %d shed; p50 %v, max %v", len(took), shed, pct(took, 50), pct(took, 100))
			if shed > 0 {
				t.Errorf("%d of 10 valid handshakes were shed", shed)
			}
			// The flood's share of the queue is a quarter second's worth. A
			// queue in the kernel's backlog (an accept loop that waits)
			// makes this many seconds.
			if worst := pct(took, 100); worst > tt.worst {
				t.Errorf("slowest valid handshake took %v, want %v at most", worst, tt.worst)
			}
			if tt.talking {
				expectMetric(t, reg, ge(1), "tunnel_server_limit_rejections_total", "limit", LimitAcceptRate)
			}
			h.startAgent(h.agentConfig("node-a"))
		})
	}
}

// TestAgentAcceptBurst: a restarted server's burst lets a whole fleet's
// handshakes start at once, far beyond the rate; once it is spent, the
// rate holds again and connections whose turn is too far away are shed.
func TestAgentAcceptBurst(t *testing.T) {
	const burst = 40
	h, reg := limitHarness(t, func(c *ServerConfig) { c.AgentAcceptRate, c.AgentAcceptBurst = 1, burst })
	took, shed := handshakes(h, burst, 0)
	t.Logf("%d handshakes at once within a burst of %d at 1/s: %d served, %d shed, max %v", burst, burst, len(took), shed, pct(took, 100))
	if shed > 0 {
		t.Fatalf("%d of %d handshakes within the burst were shed", shed, burst)
	}
	if _, shed := handshakes(h, 5, 0); shed < 3 { // one turn a second, a second of queue at most
		t.Errorf("after the burst: %d of 5 handshakes at once shed, want at least 3 at 1/s", shed)
	}
	expectMetric(t, reg, ge(3), "tunnel_server_limit_rejections_total", "limit", LimitAcceptRate)
}

// handshakes starts n TLS handshakes as node-a with the agent port, one
// every interval, and returns the sorted times of those that completed
// and the number that failed.
func handshakes(h *harness, n int, interval time.Duration) (took []time.Duration, failed int) {
	cfg := h.agentConfig("node-a").TLS
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", h.agentAddr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			took = append(took, time.Since(start))
			c.Close()
		}()
		time.Sleep(interval)
	}
	wg.Wait()
	slices.Sort(took)
	return took, failed
}

// flood opens perSecond connections a second to addr from 127.0.0.2 until
// stop, which send nothing or, if talking, a few bytes that are not TLS.
// All stay open until stop.
func flood(addr string, perSecond int, talking bool, stop <-chan struct{}) {
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	tick := time.NewTicker(time.Second / time.Duration(perSecond))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			continue
		}
		if talking {
			c.Write([]byte("\x16\x03\x01\x00\x05hello"))
		}
		conns = append(conns, c)
	}
}

// pct returns the p-th percentile of sorted durations.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)*p/100, len(sorted)-1)]
}

// TestListenerCaps: connections beyond a listener's cap are refused at
// once — an agent connection closed, a frontend one answered 503 — and the
// places come back when connections end.
func TestListenerCaps(t *testing.T) {
	h, reg := limitHarness(t, func(c *ServerConfig) {
		c.MaxAgentHandshakes = 2
		c.MaxFrontendConns = 2
	})
	t.Run("agent port", func(t *testing.T) {
		var held []net.Conn
		for range 2 {
			c, err := net.Dial("tcp", h.agentAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			held = append(held, c)
		}
		expectClosed(t, h.agentAddr)
		expectMetric(t, reg, ge(1), "tunnel_server_limit_rejections_total", "limit", LimitAgentHandshakes)
		for _, c := range held {
			c.Close()
		}
		waitFor(t, "the places to come back", func() bool { return h.srv.agentCap.n.Load() == 0 })
		h.startAgent(h.agentConfig("node-a"))
	})
	t.Run("frontend", func(t *testing.T) {
		echo := startEcho(t, "127.0.0.1:0")
		a, b := h.mustConnect(echo), h.mustConnect(echo)
		expectStatus(t, h, echo, http.StatusServiceUnavailable, "limit of 2 frontend connections (--max-frontend-connections)")
		expectMetric(t, reg, ge(1), "tunnel_server_limit_rejections_total", "limit", LimitFrontendConns)
		a.Close()
		b.Close()
		waitFor(t, "the places to come back", func() bool { return h.srv.frontCap.n.Load() == 0 })
		h.mustConnect(echo).Close()
	})
}

// expectClosed dials addr and expects the server to close the connection
// without a word.
func expectClosed(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("read %d bytes, %v; want the connection closed at once", n, err)
	}
}
