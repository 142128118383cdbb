package konnectivity

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	proxy "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/tunnel-project/tunnel/tunnel"
)

// proxyStream is the state of one Proxy stream. The receive loop is its
// only reader; sends are serialized by sendMu.
type proxyStream struct {
	f      *frontend
	stream proxy.ProxyService_ProxyServer
	sendMu sync.Mutex

	dialCtx    context.Context // ends with the stream, or on DIAL_CLS
	cancelDial context.CancelFunc
	dialReq    chan *proxy.DialRequest // the first DIAL_REQ
	dialed     atomic.Bool             // a DIAL_REQ has arrived
	connID     atomic.Int64            // set just before DIAL_RSP
	data       chan []byte             // DATA payloads, to conn.Read
	recvDone   chan struct{}           // closed when the receive loop ends
	recvErr    error                   // why it ended; read after recvDone
}

func newProxyStream(f *frontend, stream proxy.ProxyService_ProxyServer) *proxyStream {
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
	timer := time.NewTimer(ps.f.dialWait)
	defer timer.Stop()
	select {
	case req := <-ps.dialReq:
		return ps.dial(req)
	case <-ps.recvDone:
		return ps.endStatus()
	case <-timer.C:
		return status.Error(codes.DeadlineExceeded, errNoDial.Error())
	}
}

// dial runs one DIAL_REQ through Server.Dial and, on success, pipes the
// tunnel to the stream until either side ends.
func (ps *proxyStream) dial(req *proxy.DialRequest) error {
	s := ps.f.s
	if err := checkDialRequest(req); err != nil {
		ps.f.log.Info("grpc frontend request rejected", "err", err.Error())
		ps.count(tunnel.ResultBadRequest.String())
		return ps.answerDial(req.Random, 0, dialReason(err))
	}
	tun, err := s.Dial(ps.dialCtx, req.Address)
	if ps.dialCtx.Err() != nil { // DIAL_CLS, or the client left: nobody to answer
		if err == nil {
			tun.Close()
		}
		ps.count(resultCanceled)
		return ps.endStatus()
	}
	ps.count(resultOf(err))
	if err != nil {
		return ps.answerDial(req.Random, 0, dialReason(err))
	}
	id := ps.f.connIDs.Add(1)
	ps.connID.Store(id)
	if err := ps.answerDial(req.Random, id, ""); err != nil {
		tun.Close()
		return err
	}
	s.Pipe(&conn{ps: ps, id: id, closed: make(chan struct{})}, tun)
	return ps.endStatus()
}

// checkDialRequest accepts what Server.Dial can serve: TCP to host:port.
func checkDialRequest(req *proxy.DialRequest) error {
	if req.Protocol != "tcp" {
		return &tunnel.DialError{Result: tunnel.ResultBadRequest, Address: req.Address,
			Detail: fmt.Sprintf("protocol %s not supported; only tcp", quoteShort(req.Protocol))}
	}
	return tunnel.CheckAddress(req.Address)
}

// resultOf returns the label of a dial that returned err.
func resultOf(err error) string {
	var de *tunnel.DialError
	switch {
	case err == nil:
		return tunnel.ResultOK.String()
	case errors.As(err, &de):
		return de.Result.String()
	}
	return tunnel.ResultError.String()
}

// dialReason is the text of a failed dial for DIAL_RSP. kube-apiserver
// shows it as the whole error, so it leads with the status code the HTTP
// frontends would answer with: "code 502 (Bad Gateway): no agent for
// 10.0.1.5", the same facts in either egress mode.
func dialReason(err error) string {
	code := http.StatusBadGateway
	var de *tunnel.DialError
	if errors.As(err, &de) {
		code = de.HTTPStatus()
	}
	return fmt.Sprintf("code %d (%s): %s", code, http.StatusText(code), err.Error())
}

// quoteShort quotes s for an error message, cut to a readable length.
func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
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
	if errors.Is(ps.recvErr, errUnexpectedPkt) || errors.Is(ps.recvErr, errDataEarly) {
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
			return fmt.Errorf("%w: CLOSE_REQ for connectID %d; this stream's is %d", errUnexpectedPkt, id, cur)
		}
		return errCloseRequest
	case proxy.PacketType_DIAL_CLS:
		return errDialClosed
	}
	return fmt.Errorf("%w: %s", errUnexpectedPkt, p.Type)
}

// handleDialRequest hands the first DIAL_REQ to serve and refuses any
// other: kube-apiserver opens one stream per dial.
func (ps *proxyStream) handleDialRequest(req *proxy.DialRequest) error {
	if req == nil {
		return fmt.Errorf("%w: DIAL_REQ without a dial request", errUnexpectedPkt)
	}
	if ps.dialed.CompareAndSwap(false, true) {
		ps.dialReq <- req
		return nil
	}
	ps.count(tunnel.ResultBadRequest.String())
	return ps.answerDial(req.Random, 0, "konnectivity: one dial per gRPC stream; open a new stream for each dial")
}

// handleData passes a DATA payload to the tunnel; empty ones are skipped.
func (ps *proxyStream) handleData(d *proxy.Data) error {
	cur := ps.connID.Load()
	switch {
	case cur == 0:
		return errDataEarly
	case d.GetConnectID() != cur:
		return fmt.Errorf("%w: DATA for connectID %d; this stream's is %d", errUnexpectedPkt, d.GetConnectID(), cur)
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
