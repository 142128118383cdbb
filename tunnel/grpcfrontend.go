package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	proxy "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// The gRPC frontend speaks the Konnectivity ProxyService.Proxy stream that
// kube-apiserver's egress selector uses with "proxyProtocol: GRPC" over a
// unix socket (k8s.io/apiserver/pkg/server/egressselector, and the client in
// sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client).
// PROTOCOL.md, "The gRPC frontend", describes the packets; in short:
//
//	→ DIAL_REQ {protocol "tcp", address, random}
//	← DIAL_RSP {random, connectID ≠ 0}      or  {random, error: the reason}
//	↔ DATA {connectID, data}                 never empty
//	→ CLOSE_REQ {connectID}  ← CLOSE_RSP {connectID}   the client waits 10 s
//	← CLOSE_RSP {connectID}                  the node side ended
//	→ DIAL_CLS {random}                      the client gave up on the dial
//
// The protocol lets one stream carry many connections; kube-apiserver's
// client opens one gRPC connection and one stream per dial, and that is all
// this frontend serves: a second DIAL_REQ on a stream is refused with an
// error. Behind the frontend runs the same Server.Dial as behind CONNECT —
// routing, policy, limits, metrics — and the same copy path (pipe), which
// sees the stream as a net.Conn (grpcConn).

// grpcMaxMessage bounds one packet the client sends. The client puts each
// Write into one DATA packet whatever its size; kube-apiserver's writes are
// a few KiB, but a caller may write more than gRPC's default 4 MiB.
const grpcMaxMessage = 16 << 20

// grpcMaxData bounds the payload of one DATA packet the server sends, well
// under the client's default 4 MiB receive limit. The copy path writes at
// most its large buffer's worth at a time anyway.
const grpcMaxData = 1 << 20

// Errors that end a gRPC frontend stream; the client sees their text in the
// stream's status.
var (
	errGRPCNoDial        = errors.New("tunnel: no DIAL_REQ on the stream in time")
	errGRPCCloseRequest  = errors.New("tunnel: CLOSE_REQ from the client")
	errGRPCDialClosed    = errors.New("tunnel: DIAL_CLS from the client")
	errGRPCDataEarly     = errors.New("tunnel: DATA before DIAL_RSP")
	errGRPCDeadline      = errors.New("tunnel: deadlines are not supported on a gRPC frontend stream")
	errGRPCUnexpectedPkt = errors.New("tunnel: unexpected packet from the client")
)

// grpcResultCanceled labels tunnel_server_grpc_dials_total for a dial the
// client withdrew (DIAL_CLS, or it went away) before the answer; every
// other label value is a dial Result.
const grpcResultCanceled = "canceled"

// grpcDials registers tunnel_server_grpc_dials_total, every series at zero,
// on the server's Registerer. The gRPC frontend owns it, so that a server
// without one shows none; a second ServeGRPC counts on the same series.
func (s *Server) grpcDials() (*prometheus.CounterVec, error) {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tunnel_server_grpc_dials_total",
		Help: "DIAL_REQs on the gRPC frontend, by result: a dial result, or canceled.",
	}, []string{"result"})
	for _, r := range resultNames {
		v.WithLabelValues(r)
	}
	v.WithLabelValues(grpcResultCanceled)
	if s.cfg.Registerer == nil {
		return v, nil
	}
	err := s.cfg.Registerer.Register(v)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
			return existing, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("tunnel: registering the gRPC frontend's metrics: %w", err)
	}
	return v, nil
}

// ServeGRPC serves the gRPC (Konnectivity ProxyService) frontend on ln, a
// unix-socket listener, until ln or the server closes. Like ServeConnect it
// returns nil then; Close ends every stream, and Shutdown lets open tunnels
// finish while new DIAL_REQs are answered "server draining".
func (s *Server) ServeGRPC(ln net.Listener) error {
	dials, err := s.grpcDials()
	if err != nil {
		ln.Close()
		return err
	}
	f := &grpcFrontend{s: s, dials: dials}
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(grpcMaxMessage),
		grpc.ConnectionTimeout(s.cfg.HeaderTimeout),
		grpc.WaitForHandlers(true), // Stop returns once every Proxy call has returned
	)
	proxy.RegisterProxyServiceServer(gs, f)
	// Close only closes ln (it holds the server's lock; Stop waits for the
	// handlers): Serve then returns, and Stop ends the streams here.
	if !s.track(ln, ln.Close) {
		return nil
	}
	defer s.untrack(ln)
	s.wg.Add(1)
	defer s.wg.Done()
	err = gs.Serve(&cappedListener{Listener: ln, s: s, cap: &s.frontCap}) // accept.go
	gs.Stop()
	f.loops.Wait()
	if errors.Is(err, net.ErrClosed) || errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// grpcFrontend implements ProxyService for one ServeGRPC.
type grpcFrontend struct {
	proxy.UnimplementedProxyServiceServer
	s       *Server
	dials   *prometheus.CounterVec // tunnel_server_grpc_dials_total
	connIDs atomic.Int64           // the last connectID handed out
	loops   sync.WaitGroup         // receive loops, which end just after their Proxy call
}

// Proxy serves one stream: one dial and its tunnel.
func (f *grpcFrontend) Proxy(stream proxy.ProxyService_ProxyServer) error {
	ps := newProxyStream(f, stream)
	f.loops.Add(1)
	go func() {
		defer f.loops.Done()
		ps.recvLoop()
	}()
	err := ps.serve()
	if err != nil {
		f.s.log.Info("grpc frontend stream ended", "err", err)
	}
	return err
}

// proxyStream is the state of one Proxy stream. The receive loop is its
// only reader; sends are serialized by sendMu.
type proxyStream struct {
	f      *grpcFrontend
	stream proxy.ProxyService_ProxyServer
	sendMu sync.Mutex

	dialCtx    context.Context // ends with the stream, or on DIAL_CLS
	cancelDial context.CancelFunc
	dialReq    chan *proxy.DialRequest // the first DIAL_REQ
	dialed     atomic.Bool             // a DIAL_REQ has arrived
	connID     atomic.Int64            // set just before DIAL_RSP
	data       chan []byte             // DATA payloads, to grpcConn.Read
	recvDone   chan struct{}           // closed when the receive loop ends
	recvErr    error                   // why it ended; read after recvDone
}

func newProxyStream(f *grpcFrontend, stream proxy.ProxyService_ProxyServer) *proxyStream {
	ctx, cancel := context.WithCancel(stream.Context())
	return &proxyStream{
		f: f, stream: stream, dialCtx: ctx, cancelDial: cancel,
		dialReq:  make(chan *proxy.DialRequest, 1),
		data:     make(chan []byte),
		recvDone: make(chan struct{}),
	}
}

// serve waits for the DIAL_REQ, dials, answers and carries the tunnel.
func (ps *proxyStream) serve() error {
	defer ps.cancelDial()
	timer := time.NewTimer(ps.f.s.cfg.HeaderTimeout)
	defer timer.Stop()
	select {
	case req := <-ps.dialReq:
		return ps.dial(req)
	case <-ps.recvDone:
		return ps.endStatus()
	case <-timer.C:
		return status.Error(codes.DeadlineExceeded, errGRPCNoDial.Error())
	}
}

// dial runs one DIAL_REQ through Server.Dial and, on success, pipes the
// tunnel to the stream until either side ends.
func (ps *proxyStream) dial(req *proxy.DialRequest) error {
	s := ps.f.s
	if err := checkDialRequest(req); err != nil {
		s.log.Info("grpc frontend request rejected", "err", err.Error())
		ps.count(ResultBadRequest.String())
		return ps.answerDial(req.Random, 0, err.Error())
	}
	tunnel, err := s.Dial(ps.dialCtx, req.Address)
	if ps.dialCtx.Err() != nil { // DIAL_CLS, or the client left: nobody to answer
		if err == nil {
			tunnel.Close()
		}
		ps.count(grpcResultCanceled)
		return ps.endStatus()
	}
	ps.count(resultOf(err).String())
	if err != nil {
		return ps.answerDial(req.Random, 0, err.Error())
	}
	id := ps.f.connIDs.Add(1)
	ps.connID.Store(id)
	if err := ps.answerDial(req.Random, id, ""); err != nil {
		tunnel.Close()
		return err
	}
	pipe(&grpcConn{ps: ps, id: id, closed: make(chan struct{})}, tunnel, s.metrics.toNode, s.metrics.fromNode)
	return ps.endStatus()
}

// checkDialRequest accepts what Server.Dial can serve: TCP to host:port.
func checkDialRequest(req *proxy.DialRequest) error {
	if req.Protocol != "tcp" {
		return &DialError{Result: ResultBadRequest, Address: req.Address,
			Detail: fmt.Sprintf("protocol %s not supported; only tcp", quoteShort(req.Protocol))}
	}
	if _, _, err := splitTarget(req.Address); err != nil {
		return &DialError{Result: ResultBadRequest, Address: quoteShort(req.Address), Detail: err.Error()}
	}
	return nil
}

func (ps *proxyStream) count(result string) {
	ps.f.dials.WithLabelValues(result).Inc()
}

// answerDial sends DIAL_RSP: connectID on success, or the reason.
func (ps *proxyStream) answerDial(random, connID int64, reason string) error {
	return ps.send(&proxy.Packet{Type: proxy.PacketType_DIAL_RSP, Payload: &proxy.Packet_DialResponse{
		DialResponse: &proxy.DialResponse{Random: random, ConnectID: connID, Error: reason}}})
}

func (ps *proxyStream) send(p *proxy.Packet) error {
	ps.sendMu.Lock()
	defer ps.sendMu.Unlock()
	return ps.stream.Send(p)
}

// endStatus is what Proxy returns once the tunnel is over: the protocol
// error that ended it, or nil when the client closed, withdrew or left.
func (ps *proxyStream) endStatus() error {
	select {
	case <-ps.recvDone:
	default:
		return nil
	}
	if errors.Is(ps.recvErr, errGRPCUnexpectedPkt) || errors.Is(ps.recvErr, errGRPCDataEarly) {
		return status.Error(codes.InvalidArgument, ps.recvErr.Error())
	}
	return nil
}

// recvLoop reads every packet of the stream until it ends or breaks the
// protocol, then closes data (the tunnel's read side) and recvDone.
func (ps *proxyStream) recvLoop() {
	var err error
	for err == nil {
		var p *proxy.Packet
		if p, err = ps.stream.Recv(); err == nil {
			err = ps.handle(p)
		}
	}
	ps.recvErr = err
	if !errors.Is(err, io.EOF) { // a half-closed stream may still get its answer
		ps.cancelDial()
	}
	close(ps.recvDone)
	close(ps.data)
}

// handle acts on one packet from the client; an error ends the stream.
func (ps *proxyStream) handle(p *proxy.Packet) error {
	switch p.Type {
	case proxy.PacketType_DIAL_REQ:
		return ps.handleDialRequest(p.GetDialRequest())
	case proxy.PacketType_DATA:
		return ps.handleData(p.GetData())
	case proxy.PacketType_CLOSE_REQ:
		id := p.GetCloseRequest().GetConnectID()
		if cur := ps.connID.Load(); cur == 0 || id != cur {
			return fmt.Errorf("%w: CLOSE_REQ for connectID %d; this stream's is %d", errGRPCUnexpectedPkt, id, cur)
		}
		return errGRPCCloseRequest
	case proxy.PacketType_DIAL_CLS:
		return errGRPCDialClosed
	}
	return fmt.Errorf("%w: %s", errGRPCUnexpectedPkt, p.Type)
}

// handleDialRequest hands the first DIAL_REQ to serve and refuses any
// other: kube-apiserver opens one stream per dial.
func (ps *proxyStream) handleDialRequest(req *proxy.DialRequest) error {
	if req == nil {
		return fmt.Errorf("%w: DIAL_REQ without a dial request", errGRPCUnexpectedPkt)
	}
	if ps.dialed.CompareAndSwap(false, true) {
		ps.dialReq <- req
		return nil
	}
	ps.count(ResultBadRequest.String())
	return ps.answerDial(req.Random, 0, "tunnel: one dial per gRPC stream; open a new stream for each dial")
}

// handleData passes a DATA payload to the tunnel; empty ones are skipped.
func (ps *proxyStream) handleData(d *proxy.Data) error {
	cur := ps.connID.Load()
	switch {
	case cur == 0:
		return errGRPCDataEarly
	case d.GetConnectID() != cur:
		return fmt.Errorf("%w: DATA for connectID %d; this stream's is %d", errGRPCUnexpectedPkt, d.GetConnectID(), cur)
	case len(d.Data) == 0:
		return nil
	}
	select {
	case ps.data <- d.Data:
		return nil
	case <-ps.stream.Context().Done():
		return ps.stream.Context().Err()
	}
}
