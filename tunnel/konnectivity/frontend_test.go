package konnectivity

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	proxy "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/tunnel-project/tunnel/tunnel"
)

// These tests speak the ProxyService stream packet by packet, as
// kube-apiserver's client does, so that each rule of the frontend can be
// seen on the wire; the e2e module runs the real client against the binary.

// grpcStreamTimeout bounds each test stream.
const grpcStreamTimeout = 20 * time.Second

// proxyClient is one ProxyService stream on its own connection.
type proxyClient struct {
	t      *testing.T
	stream proxy.ProxyService_ProxyClient
	close  func() // closes the connection
}

func openProxy(t *testing.T, path string) *proxyClient {
	t.Helper()
	c, err := tryProxy(t, path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryProxy opens a stream on a new connection, or returns the error that
// kept it from opening; the test's cleanup closes the connection.
func tryProxy(t *testing.T, path string) (*proxyClient, error) {
	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), grpcStreamTimeout)
	t.Cleanup(func() { cancel(); cc.Close() })
	stream, err := proxy.NewProxyServiceClient(cc).Proxy(ctx)
	if err != nil {
		return nil, err
	}
	return &proxyClient{t: t, stream: stream, close: func() { cancel(); cc.Close() }}, nil
}

func (c *proxyClient) send(p *proxy.Packet) {
	c.t.Helper()
	if err := c.stream.Send(p); err != nil {
		c.t.Fatalf("send %s: %v", p.Type, err)
	}
}

func (c *proxyClient) dialRequest(protocol, addr string, random int64) {
	c.t.Helper()
	c.send(&proxy.Packet{Type: proxy.PacketType_DIAL_REQ, Payload: &proxy.Packet_DialRequest{
		DialRequest: &proxy.DialRequest{Protocol: protocol, Address: addr, Random: random}}})
}

func (c *proxyClient) data(id int64, b []byte) {
	c.t.Helper()
	c.send(&proxy.Packet{Type: proxy.PacketType_DATA, Payload: &proxy.Packet_Data{Data: &proxy.Data{ConnectID: id, Data: b}}})
}

func (c *proxyClient) recv() *proxy.Packet {
	c.t.Helper()
	p, err := c.stream.Recv()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return p
}

// dialResponse reads the DIAL_RSP for random.
func (c *proxyClient) dialResponse(random int64) *proxy.DialResponse {
	c.t.Helper()
	p := c.recv()
	r := p.GetDialResponse()
	if p.Type != proxy.PacketType_DIAL_RSP || r == nil {
		c.t.Fatalf("got %s, want DIAL_RSP", p.Type)
	}
	if r.Random != random {
		c.t.Fatalf("DIAL_RSP random %d, want %d", r.Random, random)
	}
	return r
}

// mustDial opens a tunnel to addr and returns its connectID.
func (c *proxyClient) mustDial(addr string) int64 {
	c.t.Helper()
	c.dialRequest("tcp", addr, 42)
	r := c.dialResponse(42)
	if r.Error != "" || r.ConnectID == 0 {
		c.t.Fatalf("DIAL_RSP error %q, connectID %d; want no error and a connectID", r.Error, r.ConnectID)
	}
	return r.ConnectID
}

// readData reads DATA for id until n bytes arrived; any other packet, or an
// empty DATA, fails the test.
func (c *proxyClient) readData(id int64, n int) []byte {
	c.t.Helper()
	var got []byte
	for len(got) < n {
		p := c.recv()
		d := p.GetData()
		switch {
		case p.Type != proxy.PacketType_DATA || d == nil:
			c.t.Fatalf("after %d of %d bytes: got %s, want DATA", len(got), n, p.Type)
		case d.ConnectID != id:
			c.t.Fatalf("DATA for connectID %d, want %d", d.ConnectID, id)
		case len(d.Data) == 0:
			c.t.Fatal("empty DATA packet")
		}
		got = append(got, d.Data...)
	}
	return got
}

// expectClose reads CLOSE_RSP for id.
func (c *proxyClient) expectClose(id int64) {
	c.t.Helper()
	p := c.recv()
	if p.Type != proxy.PacketType_CLOSE_RSP || p.GetCloseResponse().GetConnectID() != id {
		c.t.Fatalf("got %s %v, want CLOSE_RSP for connectID %d", p.Type, p.Payload, id)
	}
}

// expectEnd wants the server to end the stream with code.
func (c *proxyClient) expectEnd(code codes.Code) error {
	c.t.Helper()
	p, err := c.stream.Recv()
	if err == nil {
		c.t.Fatalf("got %s, want the stream to end", p.Type)
	}
	if got := status.Code(err); (code == codes.OK && !errors.Is(err, io.EOF)) || (code != codes.OK && got != code) {
		c.t.Fatalf("stream ended with %v, want %s", err, code)
	}
	return err
}

func TestGRPCFrontendEcho(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *tunnel.ServerConfig) { c.Registerer = reg })
	path := h.grpcPath
	h.startAgent(h.agentConfig())
	echo := startEcho(t)

	c := openProxy(t, path)
	id := c.mustDial(echo)
	for _, n := range []int{1, 100, 2048, 2049, 65536, 1<<20 + 7, 3 << 20} {
		want := make([]byte, n)
		rand.Read(want)
		c.data(id, want)
		c.data(id, nil) // skipped, not forwarded as a zero-length write
		if got := c.readData(id, n); !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: echo differs", n)
		}
	}
	start := time.Now()
	c.send(&proxy.Packet{Type: proxy.PacketType_CLOSE_REQ, Payload: &proxy.Packet_CloseRequest{
		CloseRequest: &proxy.CloseRequest{ConnectID: id}}})
	c.expectClose(id)
	if d := time.Since(start); d > time.Second {
		t.Errorf("CLOSE_RSP took %v", d)
	}
	c.expectEnd(codes.OK)
	waitFor(t, "the tunnel to end", func() bool { return h.srv.Tunnels() == 0 })
	expectMetric(t, reg, eq(1), "tunnel_server_grpc_dials_total", "result", "ok")
	expectMetric(t, reg, eq(1), "tunnel_server_dials_total", "result", "ok")
	expectMetric(t, reg, eq(0), "tunnel_server_grpc_dials_total", "result", resultCanceled)
	expectMetric(t, reg, ge(float64(1<<20)), "tunnel_server_bytes_total", "direction", "to_node")
}

// TestGRPCFrontendDialErrors wants each failure as a DIAL_RSP with the
// status code and reason CONNECT would put in its status line, and no
// connectID.
func TestGRPCFrontendDialErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *tunnel.ServerConfig) { c.Registerer = reg })
	path := h.grpcPath
	h.startAgent(h.agentConfig())
	closed := listenTCP(t, "127.0.0.1:0")
	refused := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct{ protocol, addr, want, result string }{
		{"tcp", "127.0.0.9:10250", "code 502 (Bad Gateway): no agent for 127.0.0.9", "no_agent"},
		{"tcp", "node-b:10250", "code 502 (Bad Gateway): no agent for node-b", "no_agent"},
		{"tcp", refused, "code 502 (Bad Gateway): dial " + refused + ": connection refused", "refused"},
		{"udp", "127.0.0.1:53", "code 400 (Bad Request): bad destination 127.0.0.1:53 (protocol \"udp\" not supported", "bad_request"},
		{"tcp", "127.0.0.1", "is not host:port", "bad_request"},
		{"tcp", "127.0.0.1:+9000", "not a number from 1 to 65535", "bad_request"},
	} {
		c := openProxy(t, path)
		c.dialRequest(tc.protocol, tc.addr, 7)
		r := c.dialResponse(7)
		if r.ConnectID != 0 || !strings.Contains(r.Error, tc.want) {
			t.Errorf("%s %s: DIAL_RSP connectID %d error %q; want 0 and %q", tc.protocol, tc.addr, r.ConnectID, r.Error, tc.want)
		}
		c.expectEnd(codes.OK)
	}
	expectMetric(t, reg, eq(2), "tunnel_server_grpc_dials_total", "result", "no_agent")
	expectMetric(t, reg, eq(1), "tunnel_server_grpc_dials_total", "result", "refused")
	expectMetric(t, reg, eq(3), "tunnel_server_grpc_dials_total", "result", "bad_request")
}

// TestGRPCFrontendNodeCloses wants the target's last bytes, then CLOSE_RSP,
// when the node side ends the connection.
func TestGRPCFrontendNodeCloses(t *testing.T) {
	h := newHarness(t, nil)
	path := h.grpcPath
	h.startAgent(h.agentConfig())
	ln := listenTCP(t, "127.0.0.1:0")
	served := make(chan struct{})
	go func() {
		defer close(served)
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("bye"))
			c.Close()
		}
	}()
	t.Cleanup(func() { <-served })

	c := openProxy(t, path)
	id := c.mustDial(ln.Addr().String())
	if got := c.readData(id, 3); string(got) != "bye" {
		t.Fatalf("got %q, want bye", got)
	}
	c.expectClose(id)
	c.expectEnd(codes.OK)
	waitFor(t, "the tunnel to end", func() bool { return h.srv.Tunnels() == 0 })
}

// TestGRPCFrontendOneDialPerStream refuses a second DIAL_REQ on a stream
// and keeps the first tunnel working.
func TestGRPCFrontendOneDialPerStream(t *testing.T) {
	h := newHarness(t, nil)
	path := h.grpcPath
	h.startAgent(h.agentConfig())
	echo := startEcho(t)

	c := openProxy(t, path)
	id := c.mustDial(echo)
	c.dialRequest("tcp", echo, 43)
	if r := c.dialResponse(43); r.ConnectID != 0 || !strings.Contains(r.Error, "one dial per gRPC stream") {
		t.Errorf("second DIAL_REQ: connectID %d error %q", r.ConnectID, r.Error)
	}
	c.data(id, []byte("still here"))
	if got := c.readData(id, 10); string(got) != "still here" {
		t.Errorf("got %q after the refused dial", got)
	}
}

// TestGRPCFrontendProtocolErrors ends streams that send DATA before their
// dial was answered, or for another connection.
func TestGRPCFrontendProtocolErrors(t *testing.T) {
	h := newHarness(t, nil)
	path := h.grpcPath
	h.startAgent(h.agentConfig())
	echo := startEcho(t)

	c := openProxy(t, path)
	c.data(1, []byte("x"))
	if err := c.expectEnd(codes.InvalidArgument); !strings.Contains(err.Error(), "DATA before DIAL_RSP") {
		t.Errorf("DATA first: %v", err)
	}
	c = openProxy(t, path)
	id := c.mustDial(echo)
	c.data(id+1000, []byte("x"))
	c.expectClose(id)
	if err := c.expectEnd(codes.InvalidArgument); !strings.Contains(err.Error(), "connectID") {
		t.Errorf("DATA for another connection: %v", err)
	}
	waitFor(t, "the tunnels to end", func() bool { return h.srv.Tunnels() == 0 })
}

// TestGRPCFrontendDialClose withdraws a dial the agent has not answered:
// the server gives it up at once and answers nothing, and the agent's dial
// on the node stops too.
func TestGRPCFrontendDialClose(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *tunnel.ServerConfig) { c.Registerer = reg })
	path := h.grpcPath
	cfg := h.agentConfig()
	dialing := make(chan struct{}, 1)
	stopped := make(chan error, 1)
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialing <- struct{}{}
		<-ctx.Done() // a destination that never answers
		stopped <- context.Cause(ctx)
		return nil, ctx.Err()
	}
	h.startAgent(cfg)

	c := openProxy(t, path)
	c.dialRequest("tcp", "127.0.0.1:10250", 9)
	<-dialing
	c.send(&proxy.Packet{Type: proxy.PacketType_DIAL_CLS, Payload: &proxy.Packet_CloseDial{CloseDial: &proxy.CloseDial{Random: 9}}})
	c.expectEnd(codes.OK)
	waitFor(t, "the dial to be given up", func() bool { return h.srv.Tunnels() == 0 })
	expectMetric(t, reg, eq(1), "tunnel_server_grpc_dials_total", "result", resultCanceled)
	select {
	case cause := <-stopped:
		// The agent's cause for a dial its server stopped waiting for.
		if cause == nil || !strings.Contains(cause.Error(), "the server stopped waiting for this dial") {
			t.Fatalf("agent's dial ended by %v, want the server's giving up", cause)
		}
	case <-time.After(5 * time.Second): // the dial timeout is 10s
		t.Fatal("the agent's dial went on after DIAL_CLS")
	}
}

// TestGRPCFrontendDraining answers new dials "server draining" while an
// open tunnel carries on, and Close ends a stream still open.
func TestGRPCFrontendDraining(t *testing.T) {
	h := newHarness(t, nil)
	path := h.grpcPath
	h.startAgent(h.agentConfig())
	echo := startEcho(t)

	open := openProxy(t, path)
	id := open.mustDial(echo)
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		shut <- h.srv.Shutdown(ctx)
	}()
	waitFor(t, "draining", h.srv.Draining)
	c := openProxy(t, path)
	c.dialRequest("tcp", echo, 5)
	if r := c.dialResponse(5); r.Error != "code 503 (Service Unavailable): server draining" {
		t.Errorf("dial while draining: %q, want code 503 (Service Unavailable): server draining", r.Error)
	}
	open.data(id, []byte("ping"))
	if got := open.readData(id, 4); string(got) != "ping" {
		t.Errorf("open tunnel while draining: %q", got)
	}
	if err := <-shut; err == nil {
		t.Error("Shutdown returned nil with a tunnel open past its deadline")
	}
	for { // a CLOSE_RSP may come first; then the stream must end
		p, err := open.stream.Recv()
		if err != nil {
			break
		}
		if p.Type != proxy.PacketType_CLOSE_RSP {
			t.Fatalf("got %s after the server closed", p.Type)
		}
	}
}
