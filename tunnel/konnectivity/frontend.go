package konnectivity

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	proxy "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/tunnel-project/tunnel/tunnel"
)

// maxMessage bounds one packet the client sends. The client puts each
// Write into one DATA packet whatever its size; kube-apiserver's writes are
// a few KiB, but a caller may write more than gRPC's default 4 MiB.
const maxMessage = 16 << 20

// maxData bounds the payload of one DATA packet the server sends, well
// under the client's default 4 MiB receive limit. The copy path writes at
// most its large buffer's worth at a time anyway.
const maxData = 1 << 20

// Errors that end a stream; the client sees their text in the stream's
// status.
var (
	errNoDial        = errors.New("konnectivity: no DIAL_REQ on the stream in time")
	errCloseRequest  = errors.New("konnectivity: CLOSE_REQ from the client")
	errDialClosed    = errors.New("konnectivity: DIAL_CLS from the client")
	errDataEarly     = errors.New("konnectivity: DATA before DIAL_RSP")
	errDeadline      = errors.New("konnectivity: deadlines are not supported on a gRPC frontend stream")
	errUnexpectedPkt = errors.New("konnectivity: unexpected packet from the client")
)

// resultCanceled labels tunnel_server_grpc_dials_total for a dial the
// client withdrew (DIAL_CLS, or it went away) before the answer; every
// other label value is a tunnel.Result.
const resultCanceled = "canceled"

// Serve serves s's gRPC (Konnectivity ProxyService) frontend on ln, a
// unix-socket listener, until ln or s closes, and returns nil then, as
// Server.ServeConnect does. Its connections count under s's
// MaxFrontendConns; Server.Close ends every stream and waits for Serve's
// goroutines, and Server.Shutdown lets open tunnels finish while new
// DIAL_REQs are answered "server draining". Its metric,
// tunnel_server_grpc_dials_total, goes to s's Registerer.
func Serve(s *tunnel.Server, ln net.Listener) error {
	cfg := s.Config()
	dials, err := registerDials(cfg.Registerer)
	if err != nil {
		ln.Close()
		return err
	}
	f := &frontend{s: s, log: s.Logger(), dialWait: cfg.HeaderTimeout, dials: dials}
	return s.ServeFrontend(ln, func(ln net.Listener) error {
		gs := grpc.NewServer(
			grpc.MaxRecvMsgSize(maxMessage),
			grpc.ConnectionTimeout(cfg.HeaderTimeout),
			grpc.WaitForHandlers(true), // Stop returns once every Proxy call has returned
		)
		proxy.RegisterProxyServiceServer(gs, f)
		err := gs.Serve(ln) // until s.Close closes ln
		gs.Stop()           // ends the streams
		f.loops.Wait()
		if errors.Is(err, net.ErrClosed) || errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return err
	})
}

// registerDials registers tunnel_server_grpc_dials_total, every series at
// zero, on reg. The gRPC frontend owns it, so that a server without one
// shows none; a second Serve counts on the same series.
func registerDials(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tunnel_server_grpc_dials_total",
		Help: "DIAL_REQs on the gRPC frontend, by result: a dial result, or canceled.",
	}, []string{"result"})
	for _, r := range tunnel.Results() {
		v.WithLabelValues(r.String())
	}
	v.WithLabelValues(resultCanceled)
	if reg == nil {
		return v, nil
	}
	err := reg.Register(v)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
			return existing, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("konnectivity: registering the gRPC frontend's metrics: %w", err)
	}
	return v, nil
}

// frontend implements ProxyService for one Serve.
type frontend struct {
	proxy.UnimplementedProxyServiceServer
	s        *tunnel.Server
	log      *slog.Logger
	dialWait time.Duration          // how long a stream may take to send its DIAL_REQ
	dials    *prometheus.CounterVec // tunnel_server_grpc_dials_total
	connIDs  atomic.Int64           // the last connectID handed out
	loops    sync.WaitGroup         // receive loops, which end just after their Proxy call
}

// Proxy serves one stream: one dial and its tunnel.
func (f *frontend) Proxy(stream proxy.ProxyService_ProxyServer) error {
	ps := newProxyStream(f, stream)
	f.loops.Go(ps.recvLoop)
	err := ps.serve()
	if err != nil {
		f.log.Info("grpc frontend stream ended", "err", err)
	}
	return err
}
