package tunnel

import (
	"log/slog"
	"net"
)

// Frontends outside this package. A frontend that pulls a heavy dependency
// lives in a package of its own that imports this one, never the reverse,
// so that the agent binary does not link it: the Konnectivity gRPC
// frontend is tunnel/konnectivity. It serves kube-apiserver with what the
// CONNECT frontend uses in here: Dial, with CheckAddress first; Pipe for
// the tunnel's bytes; ServeFrontend for its listener's place in the
// server's lifecycle and its connections' place under MaxFrontendConns;
// and the server's Config and Logger.

// ServeFrontend serves ln with serve, for a frontend that runs its own
// accept loop (a grpc.Server's Serve). serve gets ln wrapped so that each
// connection it accepts holds a place under MaxFrontendConns until it is
// closed; one over the cap is closed at once and counted, as on the
// CONNECT frontend. Close closes ln and waits for serve to return, so
// serve must end everything it started, once ln's Accept fails, before
// it returns. ServeFrontend returns what serve returns, or nil, with ln
// closed and serve not called, if the server has closed.
func (s *Server) ServeFrontend(ln net.Listener, serve func(net.Listener) error) error {
	if !s.enroll(ln, ln.Close) { // lifecycle.go
		return nil
	}
	defer s.wg.Done()
	defer s.untrack(ln)
	return serve(&cappedListener{Listener: ln, s: s, cap: &s.frontCap}) // accept.go
}

// Pipe carries a tunnel that Dial returned and the frontend connection it
// serves, both ways, until both directions have ended, then closes both.
// It is the copy path every tunneled byte takes (copy.go), with its
// half-close, its pooled buffers and the server's byte counters: when one
// side reaches EOF the other is half-closed if it has CloseWrite, and
// closed if it has not.
func (s *Server) Pipe(client, tunnel net.Conn) {
	ended := make(chan struct{})
	s.carry(client, tunnel, func() { close(ended) }) // move.go
	<-ended
}

// CheckAddress reports, as a *DialError with ResultBadRequest, whether
// addr is not a destination Dial serves: "host:port", with a port in plain
// decimal from 1 to 65535. Frontends check where a request enters
// (PROTOCOL.md), so a malformed destination is refused there and never
// counted as a dial.
func CheckAddress(addr string) error {
	if _, _, err := splitTarget(addr); err != nil { // protocol.go
		return &DialError{Result: ResultBadRequest, Address: quoteShort(addr), Detail: err.Error()}
	}
	return nil
}

// Config returns the configuration the server runs with: the one NewServer
// took, with its ID filled in. A frontend outside this package reads its
// timeouts (HeaderTimeout) and its Registerer there.
func (s *Server) Config() ServerConfig { return s.cfg }

// Logger returns the server's logger, a discarding one if
// ServerConfig.Logger was nil, for a frontend outside this package to log
// beside the server.
func (s *Server) Logger() *slog.Logger { return s.log }
