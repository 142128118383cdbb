package tunnel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for the decoders protocol_test.go does not cover: the frame
// reader under every control and dial stream, the hello reply the agent
// decodes, and the server's admission of a decoded hello. Seeds, including
// the inputs long runs found, live in testdata/fuzz/<Target>/; `make fuzz`
// runs every target for longer (README, "Testing").

// FuzzReadFrame feeds arbitrary bytes to the frame reader the way the
// server's control-stream loop (watchDrain) and the dial handshake use it:
// frame after frame until an error. Each frame must consume exactly its
// header and its declared payload, re-encode to the same bytes, and leave
// the bytes after it in the stream.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{frameDrain, 0, 0})
	f.Add(appendDialRequest(nil, dialRequest{ID: 1, Timeout: time.Second, Address: "10.0.0.5:10250"}))
	f.Add(append(appendDialResponse(nil, dialResponse{Result: ResultOK}), "raw tunnel bytes"...))
	f.Add(append([]byte{frameDialResponse, 0xff, 0xff}, make([]byte, maxFramePayload)...)) // the longest frame
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			before := r.Len()
			typ, payload, err := readAnyFrame(r)
			if err != nil {
				if before >= frameHeaderLen && int(in[len(in)-before+1])<<8|int(in[len(in)-before+2]) <= before-frameHeaderLen {
					t.Fatalf("a whole frame was refused: %v", err)
				}
				return
			}
			used := in[len(in)-before : len(in)-r.Len()]
			var again bytes.Buffer
			if err := writeFrame(&again, typ, payload); err != nil || !bytes.Equal(again.Bytes(), used) {
				t.Fatalf("frame %x re-encodes as %x (%v)", used, again.Bytes(), err)
			}
			if p, err := readFrame(bytes.NewReader(used), typ); err != nil || !bytes.Equal(p, payload) {
				t.Fatalf("readFrame of %x: %x, %v; readAnyFrame gave %x", used, p, err, payload)
			}
			if _, err := readFrame(bytes.NewReader(used), typ+1); !errors.Is(err, errFrameType) {
				t.Fatalf("readFrame accepted type 0x%02x as 0x%02x: %v", typ, typ+1, err)
			}
		}
	})
}

// FuzzDecodeReplicaCount decodes a replicas frame, which steers how many
// sessions the agent keeps: anything accepted must be a count of at least 1.
func FuzzDecodeReplicaCount(f *testing.F) {
	f.Add([]byte(`{"serverCount":3}`))
	f.Add([]byte(`{"serverCount":3,"peers":{"s2":"10.0.0.12:8132","s3":"10.0.0.13:8132"}}`))
	f.Add([]byte(`{"serverCount":0}`))
	f.Add([]byte(`{"serverCount":-1e9}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		r, err := decodeReplicaCount(payload)
		if err == nil && r.ServerCount < 1 {
			t.Fatalf("accepted replica count %d from %q", r.ServerCount, payload)
		}
	})
}

// FuzzDecodeHelloReply decodes what a server (or anything listening on its
// address) answers to an agent's hello. Whatever it accepts must survive a
// round trip unchanged.
func FuzzDecodeHelloReply(f *testing.F) {
	f.Add([]byte(`{"version":1,"serverID":"3f2a9c0d1e4b5a69"}`))
	f.Add([]byte(`{"version":1,"serverID":"x","error":"certificate does not prove node name"}`))
	f.Add([]byte(`{"version":1,"serverID":"s2","serverCount":3,"error":"agent already holds a session to server s2","held":true}`))
	f.Add([]byte(`{"version":1,"serverID":"s1","serverCount":3,"address":"10.0.0.11:8132","peers":{"s2":"10.0.0.12:8132"}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		r, err := decodeHelloReply(payload)
		if err != nil {
			return
		}
		once, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", r, err)
		}
		r2, err := decodeHelloReply(once)
		twice, _ := json.Marshal(r2)
		if err != nil || !bytes.Equal(twice, once) {
			t.Fatalf("hello reply changed in a round trip: %s then %s (%v)", once, twice, err)
		}
	})
}

// FuzzAdmitHello runs the server's admission of an agent's hello, the step
// that turns bytes from a node into routes, against a certificate that
// proves node "node-a" and IP 10.0.0.5. Whatever it admits must be proven
// by that certificate (or, with trusted routes, at least well formed): a
// hello must never win a route its credential does not back.
func FuzzAdmitHello(f *testing.F) {
	f.Add([]byte(`{"version":1,"node":"node-a","ips":["10.0.0.5"]}`), false)
	f.Add([]byte(`{"version":1,"node":"NODE-A","ips":["::ffff:10.0.0.5"]}`), false)
	f.Add([]byte(`{"version":1,"node":"node-a","ips":["10.0.0.6"],"podCIDRs":["10.244.1.0/24","::ffff:10.0.0.0/104"],"defaultRoute":true}`), true)
	peer := Identity{Transport: "tls", Subject: "CN=system:node:node-a", Nodes: []string{"node-a"},
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.5")}}
	f.Fuzz(func(t *testing.T, payload []byte, trust bool) {
		h, err := decodeHello(payload)
		if err != nil {
			return
		}
		s := &Server{cfg: ServerConfig{TrustAgentRoutes: trust}}
		a, err := s.admit(&fakeSession{peer: peer}, h)
		if err != nil {
			if rejectReason(err) == RejectHello {
				t.Fatalf("admission error %q has no reason of its own", err)
			}
			return
		}
		checkAdmitted(t, a, h, peer, trust)
	})
}

// checkAdmitted fails t unless a holds only what peer proves (or, trusted,
// well-formed routes).
func checkAdmitted(t *testing.T, a *agentConn, h Hello, peer Identity, trust bool) {
	t.Helper()
	if h.Version != ProtocolVersion || a.node != strings.ToLower(h.Node) || !peer.provesNode(a.node) {
		t.Fatalf("admitted node %q (hello %q, version %d); the certificate proves %v", a.node, h.Node, h.Version, peer.Nodes)
	}
	for _, ip := range a.ips {
		if !ip.IsValid() || ip.Is4In6() || !trust && !peer.provesIP(ip) {
			t.Fatalf("admitted node IP %v; the certificate proves %v", ip, peer.IPs)
		}
	}
	if !trust && (len(a.cidrs) > 0 || a.defaultRoute) {
		t.Fatalf("admitted pod CIDRs %v / default route %v without trusted routes", a.cidrs, a.defaultRoute)
	}
	for _, p := range a.cidrs {
		if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() {
			t.Fatalf("admitted pod CIDR %v", p)
		}
	}
}

// fakeSession is a Session that only has a peer identity; admission uses
// nothing else.
type fakeSession struct{ peer Identity }

func (s *fakeSession) Open(context.Context, []byte) (net.Conn, error) { return nil, io.ErrClosedPipe }
func (s *fakeSession) Accept(context.Context) (net.Conn, error)       { return nil, io.ErrClosedPipe }
func (s *fakeSession) Close() error                                   { return nil }
func (s *fakeSession) Done() <-chan struct{}                          { return nil }
func (s *fakeSession) Peer() Identity                                 { return s.peer }
func (s *fakeSession) Ping(context.Context) (time.Duration, error) {
	return 0, io.ErrClosedPipe
}
