//go:build linux

package attack

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Attack 4: floods and half-sent input on the CONNECT frontends.
func TestFrontendFloodsAndBadInput(t *testing.T) {
	t.Parallel()
	cs := newCerts(t, nodeA+"="+nodeAIP)
	const headerTimeout = 2 * time.Second
	srv := startServer(t, cs, serverOpts{frontend: true, headerTimeout: headerTimeout})
	startAgent(t, srv, agentOpts{node: nodeA, ips: []string{nodeAIP}})
	echo := startTarget(t, nodeAIP, serveEcho)
	mustTunnel(t, srv, echo)
	client := cs.pair(t, "client")

	t.Run("stalled requests are cut off at the header timeout", func(t *testing.T) {
		testStalledRequests(t, srv, cs.clientTLS(&client), echo, headerTimeout)
	})
	t.Run("connection cap", func(t *testing.T) {
		testFrontendCap(t, cs, echo)
	})
	t.Run("bad targets", func(t *testing.T) {
		testBadTargets(t, srv, echo)
	})
}

// stallKind is one way of sending part of a request and then nothing.
type stallKind struct {
	name string
	tcp  bool // on the TCP+mTLS frontend (else the unix socket)
	tls  bool // complete the TLS handshake first (TCP only)
	send []byte
	drip bool // send a byte every 300ms for ever: slowloris
}

// testStalledRequests opens many connections at once that each send part
// of a request (or of a TLS handshake) and stall. Every one must be cut off
// by the server within the header timeout (plus slack), never answered
// 200; meanwhile a valid CONNECT is served; afterwards the server is back
// at its baseline.
func testStalledRequests(t *testing.T, srv *server, cfg *tls.Config, echo string, timeout time.Duration) {
	half := []byte("CONNECT " + echo[:len(echo)-2])
	kinds := []stallKind{
		{name: "uds: nothing at all"},
		{name: "uds: half a request line", send: half},
		{name: "uds: request line, headers unfinished", send: []byte("CONNECT " + echo + " HTTP/1.1\r\nHost: 127.0.0.1\r\n")},
		{name: "uds: slowloris, a byte every 300ms", send: []byte("CONNECT "), drip: true},
		{name: "tcp: no TLS ClientHello", tcp: true},
		{name: "tcp: half a TLS record", tcp: true, send: partialHello},
		{name: "tcp: TLS done, half a request line", tcp: true, tls: true, send: half},
		{name: "tcp: TLS done, slowloris", tcp: true, tls: true, send: []byte("CONNECT "), drip: true},
	}
	perKind := pick(40, 400)
	base := baseline(t, srv.adminAddr)
	before := mustScrape(t, srv.adminAddr)
	peaks := samplePeaks(srv.adminAddr)

	type result struct {
		kind    string
		took    time.Duration
		err     error  // the stall never started (dial failed)
		got     string // what the server sent, if anything
		stillUp bool
	}
	results := make(chan result, len(kinds)*perKind)
	var wg sync.WaitGroup
	bound := timeout + pick(3*time.Second, 6*time.Second) // thousands of connections at once in long runs
	for _, k := range kinds {
		for i := 0; i < perKind; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := result{kind: k.name}
				dialStart := time.Now()
				var c net.Conn
				var err error
				switch {
				case !k.tcp:
					c, err = dialUDS(srv)
				case k.tls:
					c, err = dialFrontend(srv, cfg)
				default:
					c, err = net.DialTimeout("tcp", srv.frontendAddr, 5*time.Second)
				}
				if err != nil && k.tls {
					// The TLS handshake counts against the header timeout:
					// under thousands of them it may be cut off there.
					r.took, r.got = time.Since(dialStart), "handshake cut off: "+err.Error()
					results <- r
					return
				}
				if err != nil {
					r.err = err
					results <- r
					return
				}
				defer c.Close()
				start := time.Now()
				if k.tls { // the server's clock started before the handshake
					start = dialStart
				}
				if len(k.send) > 0 {
					c.Write(k.send)
				}
				stop := make(chan struct{})
				if k.drip {
					go func() {
						for i := 0; ; i++ {
							select {
							case <-stop:
								return
							case <-time.After(300 * time.Millisecond):
							}
							if _, err := c.Write([]byte{"abcdefgh"[i%8]}); err != nil {
								return
							}
						}
					}()
				}
				c.SetReadDeadline(start.Add(bound + 2*time.Second))
				b, err := io.ReadAll(io.LimitReader(c, 4096))
				close(stop)
				r.took, r.got = time.Since(start), string(b)
				var ne net.Error
				r.stillUp = errors.As(err, &ne) && ne.Timeout()
				results <- r
			}()
		}
	}
	// A valid CONNECT while they stall.
	time.Sleep(timeout / 2)
	took, err := tunnelWorks(srv, echo)
	if err != nil {
		t.Errorf("valid CONNECT while %d connections stall: %v", len(kinds)*perKind, err)
	} else {
		t.Logf("valid CONNECT and 64 KiB echo while %d connections stall: %s", len(kinds)*perKind, took.Round(time.Millisecond))
	}
	wg.Wait()
	close(results)
	peak := peaks.finish(t)

	byKind := map[string][]time.Duration{}
	for r := range results {
		switch {
		case r.err != nil:
			t.Errorf("%s: could not even connect: %v", r.kind, r.err)
		case r.stillUp:
			t.Errorf("%s: still open %s after it stalled (header timeout %s)", r.kind, r.took.Round(time.Millisecond), timeout)
		case strings.HasPrefix(r.got, "HTTP/1.1 200"):
			t.Errorf("%s: answered %q", r.kind, firstLine(r.got))
		case r.took > bound:
			t.Errorf("%s: cut off after %s, want within %s", r.kind, r.took.Round(time.Millisecond), bound)
		}
		byKind[r.kind] = append(byKind[r.kind], r.took)
	}
	for _, k := range kinds {
		ds := byKind[k.name]
		t.Logf("%-40s cut off after p50 %s, max %s", k.name, percentile(ds, 50).Round(time.Millisecond), percentile(ds, 100).Round(time.Millisecond))
	}
	after := mustScrape(t, srv.adminAddr)
	t.Logf(`tunnel_server_limit_rejections_total{limit="header_timeout"} %.0f → %.0f; peak %s`,
		before.get("tunnel_server_limit_rejections_total", "limit", "header_timeout"),
		after.get("tunnel_server_limit_rejections_total", "limit", "header_timeout"), peak)
	if after.get("tunnel_server_limit_rejections_total", "limit", "header_timeout") <=
		before.get("tunnel_server_limit_rejections_total", "limit", "header_timeout") {
		t.Errorf(`tunnel_server_limit_rejections_total{limit="header_timeout"} did not grow`)
	}
	expectBaseline(t, "tunnel-server", srv.adminAddr, base)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimRight(line, "\r")
}

// testFrontendCap fills a server's --frontend-max-connections with stalled
// connections and requires the ones over the cap to be refused at once (a
// 503 on the unix socket, closed before TLS on TCP) rather than held, the
// server's open files to stay within the cap, the refusals to be counted,
// and a valid CONNECT to work once the stalled ones are gone.
func testFrontendCap(t *testing.T, cs *certSet, echo string) {
	// The flag's announced name, or the one the other limits' names suggest.
	var flag string
	for _, f := range []string{"frontend-max-connections", "max-frontend-connections"} {
		if serverHasFlag(t, f) {
			flag = f
			break
		}
	}
	if flag == "" {
		t.Skip("tunnel-server --help lists neither --frontend-max-connections nor --max-frontend-connections (the cap is not in this build)")
	}
	t.Logf("cap flag: --%s", flag)
	const capN = 20
	srv := startServer(t, cs, serverOpts{frontend: true, headerTimeout: 10 * time.Second,
		extra: []string{"--" + flag, fmt.Sprint(capN)}})
	startAgent(t, srv, agentOpts{node: nodeA, ips: []string{nodeAIP}})
	mustTunnel(t, srv, echo)
	base := baseline(t, srv.adminAddr)
	before := mustScrape(t, srv.adminAddr)

	// Fill the cap with stalled connections, half on each frontend.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < capN; i++ {
		var c net.Conn
		var err error
		if i%2 == 0 {
			c, err = dialUDS(srv)
		} else {
			c, err = net.DialTimeout("tcp", srv.frontendAddr, 5*time.Second)
		}
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			c.Write([]byte("CONNECT "))
		} else {
			c.Write(partialHello)
		}
		held = append(held, c)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		u, err := readUsage(srv.adminAddr, false)
		return err == nil && u.fds >= base.fds+capN, fmt.Sprintf("server holds %v fds, want %v + %d stalled", u.fds, base.fds, capN)
	})

	// Over the cap: refused at once, on both frontends.
	extra := pick(40, 400)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slow, answered200 int
	var answers = map[string]int{}
	for i := 0; i < extra; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			var err error
			if i%2 == 0 {
				c, err = dialUDS(srv)
			} else {
				c, err = net.DialTimeout("tcp", srv.frontendAddr, 5*time.Second)
			}
			if err != nil {
				return // refused at connect: fine
			}
			defer c.Close()
			start := time.Now()
			c.Write([]byte(connectRequest(echo)))
			c.SetReadDeadline(start.Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			mu.Lock()
			defer mu.Unlock()
			if time.Since(start) > 2*time.Second {
				slow++
			}
			if strings.HasPrefix(line, "HTTP/1.1 200") {
				answered200++
			}
			answers[map[bool]string{true: "uds", false: "tcp"}[i%2 == 0]+": "+firstLine(line)]++
		}()
	}
	wg.Wait()
	t.Logf("%d connections over a cap of %d: %v", extra, capN, answers)
	if slow > 0 {
		t.Errorf("%d of %d connections over the cap were held over 2s instead of refused at once", slow, extra)
	}
	if answered200 > 0 {
		t.Errorf("%d connections over the cap were served", answered200)
	}
	u, err := readUsage(srv.adminAddr, false)
	if err == nil && u.fds > base.fds+capN+slackFDs {
		t.Errorf("server holds %v fds with a cap of %d frontend connections (baseline %v)", u.fds, capN, base.fds)
	}
	after := mustScrape(t, srv.adminAddr)
	grew := after.get("tunnel_server_limit_rejections_total") - before.get("tunnel_server_limit_rejections_total")
	t.Logf("tunnel_server_limit_rejections_total grew by: %s", counterGrowth(before, after, "tunnel_server_limit_rejections_total", "limit"))
	if grew < float64(extra)/2 {
		t.Errorf("tunnel_server_limit_rejections_total grew by %.0f for %d refused connections", grew, extra)
	}

	// Once the stalled connections go, the frontend serves again.
	for _, c := range held {
		c.Close()
	}
	held = nil
	var lastErr error
	if _, ok := within(5*time.Second, func() bool { _, lastErr = tunnelWorks(srv, echo); return lastErr == nil }); !ok {
		t.Errorf("valid CONNECT after the stalled connections closed: %v", lastErr)
	}
	expectBaseline(t, "tunnel-server", srv.adminAddr, base)
}

// testBadTargets sends CONNECTs whose port is not plain decimal 1-65535:
// each gets 400. Leading zeros are plain decimal and reach the target.
func testBadTargets(t *testing.T, srv *server, echo string) {
	host, port, _ := net.SplitHostPort(echo)
	bad := []string{
		host + ":+" + port,
		host + ":-" + port,
		host + ":0",
		host + ":00",
		host + ":65536",
		host + ":99999999999999999999",
		host + ":0x" + fmt.Sprintf("%x", atoi(port)),
		host + ":" + port[:1] + "_" + port[1:],
		host + ":" + port + ".0",
		host + ":1e3",
		host + ":%20" + port,
		host + ":" + fullWidth(port),
		host + ":",
		host,
		":" + port,
		"[" + host + "]:" + port + ":" + port,
		"[::1]:+" + port,
	}
	for _, dest := range bad {
		t.Run(dest, func(t *testing.T) {
			c, code, status, err := connectUDS(srv, dest)
			if err != nil {
				t.Fatalf("CONNECT %s: %v", dest, err)
			}
			c.Close()
			if code != 400 {
				t.Errorf("CONNECT %q: %q, want 400", dest, status)
			}
		})
	}
	// A port with spaces splits the request line: 400 as well.
	for _, req := range []string{
		"CONNECT " + host + ": " + port + " HTTP/1.1\r\n\r\n",
		"CONNECT " + host + ":" + port + " " + " HTTP/1.1\r\n\r\n",
		"CONNECT " + host + ":\t" + port + " HTTP/1.1\r\n\r\n",
	} {
		t.Run(fmt.Sprintf("%q", req), func(t *testing.T) {
			c, err := dialUDS(srv)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, code, status, err := request(c, req, 10*time.Second)
			if err != nil {
				t.Fatalf("%q: %v", req, err)
			}
			if code != 400 {
				t.Errorf("%q: %q, want 400", req, status)
			}
		})
	}
	for _, dest := range []string{host + ":0" + port, host + ":000" + port} {
		t.Run(dest+" (leading zeros: decimal)", func(t *testing.T) {
			c, code, status, err := connectUDS(srv, dest)
			if err != nil {
				t.Fatalf("CONNECT %s: %v", dest, err)
			}
			defer c.Close()
			if code != 200 {
				t.Fatalf("CONNECT %q: %q, want 200 (port %s)", dest, status, port)
			}
			if err := echoOnce(c, 4096); err != nil {
				t.Error(err)
			}
		})
	}
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

// fullWidth spells digits as Unicode full-width digits, which are digits
// to unicode.IsDigit but not to a port parser.
func fullWidth(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune('０' + (r - '0'))
	}
	return b.String()
}
