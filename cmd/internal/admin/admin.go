// Package admin is the admin listener both binaries run (DESIGN.md section
// 6): Prometheus metrics, kube-style health endpoints and, on request,
// pprof — on loopback by default, never on the tunnel's own ports.
package admin

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

	"github.com/tunnel-project/tunnel/cmd/internal/cli"
)

// Flags are the admin listener's flags. (--version and the version
// command are cli.Program's, printing Build.)
type Flags struct {
	Addr      string
	Profiling bool
}

// Bind adds --admin-listen-address (defaulting to defaultAddr) and
// --enable-profiling to fs.
func (f *Flags) Bind(fs *pflag.FlagSet, defaultAddr string) {
	fs.StringVar(&f.Addr, "admin-listen-address", defaultAddr, "host:port for /metrics, /healthz, /livez, /readyz and, with --enable-profiling, /debug/pprof/ (empty disables)")
	fs.BoolVar(&f.Profiling, "enable-profiling", false, "serve net/http/pprof on the admin listener under /debug/pprof/")
}

// NewHandler returns the admin endpoints: /metrics from g, /healthz and
// /livez from h.Live, /readyz from h.Ready, and /debug/pprof/ if profiling.
func NewHandler(g prometheus.Gatherer, h Health, profiling bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	handleHealth(mux, "healthz", h.Live)
	handleHealth(mux, "livez", h.Live)
	handleHealth(mux, "readyz", h.Ready)
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Server is a running admin listener.
type Server struct {
	srv  *http.Server
	done chan error
}

// Start listens on f.Addr and serves h there until Close; with an empty
// address it returns nil, nil. It logs msg=listening listener=admin addr=…
// as the binaries do for their other listeners. A listen failure is a
// *cli.FlagError naming --admin-listen-address.
func Start(f Flags, h http.Handler, log *slog.Logger) (*Server, error) {
	if f.Addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", f.Addr)
	if err != nil {
		return nil, cli.Blame("admin-listen-address", err)
	}
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		done: make(chan error, 1),
	}
	log.Info("listening", "listener", "admin", "addr", ln.Addr().String())
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Close stops the listener, gives requests in flight a second to finish,
// and waits for the serving goroutine. A nil *Server closes as a no-op.
func (s *Server) Close() error {
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	if err := <-s.done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
