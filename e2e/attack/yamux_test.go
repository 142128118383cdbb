//go:build linux

package attack

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"
)

// goroutineBound is how many goroutines over its baseline the server may
// start for one hostile session, whatever it sends.
const goroutineBound = 1000

// Attack 6: a hostile agent that completes TLS with a valid node
// certificate (node-evil) and then speaks raw yamux: floods of pings,
// window updates, SYNs and RSTs, data for streams that do not exist or
// beyond the window, and garbage. The server must stay healthy (node-a's
// agent keeps serving CONNECTs during the attack), start no more than
// goroutineBound goroutines for it, close the hostile session (before a
// hello: within the handshake timeout, plus the 5 s crypto/tls may spend
// on close_notify to a peer that does not read; a malformed frame: at
// once), and
// return to its baseline of goroutines, files and memory afterwards.
//
// The peer never reads during the attack, with a 4 KiB receive buffer, so
// whatever the server answers (ping acknowledgements, RSTs) backs up.
func TestHostileYamux(t *testing.T) {
	t.Parallel()
	const handshakeTimeout = 3 * time.Second
	cs := newCerts(t, nodeA+"="+nodeAIP, nodeEvil+"="+evilIP)
	srv := startServer(t, cs, serverOpts{handshakeTimeout: handshakeTimeout})
	startAgent(t, srv, agentOpts{node: nodeA, ips: []string{nodeAIP}})
	echo := startTarget(t, nodeAIP, serveEcho)
	mustTunnel(t, srv, echo)
	evil := cs.agentPair(t, nodeEvil)
	cfg := cs.clientTLS(&evil)
	n := pick(100_000, 1_000_000)

	// The server closes a session with TLS's close_notify, whose write may
	// wait up to 5 s for a peer that does not read (crypto/tls).
	closeBound := handshakeTimeout + 5*time.Second + 2*time.Second
	cases := []struct {
		name       string
		registered bool // send a valid hello (node-evil) before the attack
		frames     func() []byte
		mustClose  bool // the server must end the session within closeBound
	}{
		{"ping flood before the hello", false, func() []byte {
			return repeatFrames(n, func(i int) []byte { return yHeader(yPing, ySYN, 0, uint32(i)) })
		}, true},
		{"ping flood after the hello", true, func() []byte {
			return repeatFrames(n, func(i int) []byte { return yHeader(yPing, ySYN, 0, uint32(i)) })
		}, false},
		{"window-update flood", false, func() []byte {
			b := yHeader(yWindowUpdate, ySYN, controlStream, 0)
			return append(b, repeatFrames(n, func(i int) []byte {
				if i%2 == 0 {
					return yHeader(yWindowUpdate, 0, controlStream, 0x7fffffff)
				}
				return yHeader(yWindowUpdate, 0, uint32(1001+2*i), 0x7fffffff)
			})...)
		}, true},
		{"window-update flood after the hello", true, func() []byte {
			return repeatFrames(n, func(i int) []byte { return yHeader(yWindowUpdate, 0, controlStream, 0x7fffffff) })
		}, false},
		{"SYN flood", false, func() []byte {
			return repeatFrames(n, func(i int) []byte { return yHeader(yWindowUpdate, ySYN, uint32(1+2*i), 0) })
		}, true},
		{"SYN flood after the hello", true, func() []byte {
			return repeatFrames(n, func(i int) []byte { return yHeader(yWindowUpdate, ySYN, uint32(3+2*i), 0) })
		}, false},
		{"SYN flood on the server's stream IDs", false, func() []byte {
			return repeatFrames(n, func(i int) []byte { return yHeader(yWindowUpdate, ySYN, uint32(2+2*i), 0) })
		}, true},
		{"duplicate SYN for one stream", false, func() []byte {
			return repeatFrames(n, func(i int) []byte { return yHeader(yWindowUpdate, ySYN, controlStream, 0) })
		}, true},
		{"RST flood for streams that do not exist", false, func() []byte {
			return repeatFrames(n, func(i int) []byte { return yHeader(yWindowUpdate, yRST, uint32(7+2*i), 0) })
		}, true},
		{"data for streams that do not exist", false, func() []byte {
			payload := bytes.Repeat([]byte{0xAA}, 1024)
			return repeatFrames(n/10, func(i int) []byte {
				return append(yHeader(yData, 0, uint32(1001+i), uint32(len(payload))), payload...)
			})
		}, true},
		{"data beyond the receive window", false, func() []byte {
			payload := bytes.Repeat([]byte{0xBB}, 4*yInitWindow)
			b := yHeader(yWindowUpdate, ySYN, controlStream, 0)
			b = append(b, yHeader(yData, 0, controlStream, uint32(len(payload)))...)
			return append(b, payload...)
		}, true},
		{"data frame announcing 4 GiB", false, func() []byte {
			return append(yHeader(yData, 0, 1001, 0xffffffff), bytes.Repeat([]byte{0xCC}, 64<<10)...)
		}, true},
		{"garbage header (version 0xff)", false, func() []byte {
			return bytes.Repeat([]byte{0xff}, 4096)
		}, true},
		{"unknown frame type", false, func() []byte {
			return yHeader(9, 0, controlStream, 0)
		}, true},
		{"go away, then a ping flood", false, func() []byte {
			b := yHeader(yGoAway, 0, 0, 0)
			return append(b, repeatFrames(n, func(i int) []byte { return yHeader(yPing, ySYN, 0, uint32(i)) })...)
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := baseline(t, srv.adminAddr)
			p, err := dialRaw(srv.agentAddr, cfg, 4096)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if tc.registered {
				r, err := p.register(hello{Version: 1, Node: nodeEvil, IPs: []string{evilIP}})
				if err != nil || r.Error != "" {
					t.Fatalf("hostile peer's valid hello: %v %q", err, r.Error)
				}
			}
			frames := tc.frames()
			peaks := samplePeaks(srv.adminAddr)
			start := time.Now()
			wrote := make(chan error, 1)
			go func() { wrote <- writeAll(p, frames, closeBound) }()

			// node-a's traffic during the attack.
			time.Sleep(200 * time.Millisecond)
			if took, err := tunnelWorks(srv, echo); err != nil {
				t.Errorf("node-a's tunnel during the attack: %v", err)
			} else {
				t.Logf("node-a's CONNECT and 64 KiB echo during the attack: %s", took.Round(time.Millisecond))
			}
			werr := <-wrote
			t.Logf("attack: %d bytes in %s (write ended: %v)", len(frames), time.Since(start).Round(time.Millisecond), werr)
			if tc.mustClose {
				left := closeBound - time.Since(start)
				_, err, closed := p.waitClosed(max(left, 0))
				if !closed {
					t.Errorf("hostile session still open %s after the attack began (want closed within %s)",
						time.Since(start).Round(time.Millisecond), closeBound)
				} else {
					t.Logf("server closed the hostile session %s after the attack began (%v)",
						time.Since(start).Round(time.Millisecond), err)
				}
			} else {
				time.Sleep(500 * time.Millisecond) // let the server work through what it read
			}
			peak := peaks.finish(t)
			if peak.goroutines > base.goroutines+goroutineBound {
				t.Errorf("server peaked at %.0f goroutines (baseline %.0f, bound +%d) for one hostile session",
					peak.goroutines, base.goroutines, goroutineBound)
			}
			if _, err := tunnelWorks(srv, echo); err != nil {
				t.Errorf("node-a's tunnel after the attack: %v", err)
			}
			p.Close()
			expectBaseline(t, "tunnel-server", srv.adminAddr, base)
		})
	}
}

// repeatFrames concatenates n frames made by f.
func repeatFrames(n int, f func(i int) []byte) []byte {
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		b.Write(f(i))
	}
	return b.Bytes()
}

// writeAll writes b in 64 KiB pieces until done, the server stops reading
// for timeout, or the connection fails.
func writeAll(p *rawPeer, b []byte, timeout time.Duration) error {
	for len(b) > 0 {
		k := min(len(b), 64<<10)
		p.conn.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := p.conn.Write(b[:k]); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("server stopped reading: %w", err)
			}
			return err
		}
		b = b[k:]
	}
	return nil
}
