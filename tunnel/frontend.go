package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tunnel-project/tunnel/certs"
)

// The CONNECT frontend speaks exactly what kube-apiserver's egress selector
// sends (k8s.io/apiserver/pkg/server/egressselector, HTTPConnect):
//
//	CONNECT <host:port> HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n
//
// one request per connection. The server dials through the tunnel first and
// only then answers: "200" in one write followed by nothing but tunneled
// bytes, or an error status whose reason phrase says what went wrong,
// because the API server logs only the status line.

// connectOK is the whole success answer, written in one Write.
var connectOK = []byte("HTTP/1.1 200 Connection established\r\n\r\n")

// requestError is a malformed CONNECT request and the status it earns.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(status int, format string, args ...any) error {
	return &requestError{status: status, msg: fmt.Sprintf(format, args...)}
}

// handleConnect serves one frontend connection. Each refusal is logged
// here once, with the flag that would change it where one would; a failed
// dial is logged by Dial. An open tunnel outlives the call (keep).
func (s *Server) handleConnect(c net.Conn, keep func() (end func())) {
	kept := false
	defer func() {
		if !kept {
			c.Close()
		}
	}()
	c.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			s.headerLimit(err, 0)
			s.log.Info("frontend handshake failed", append(timeoutFlag(err), "remote", remoteName(c), "err", err)...)
			return
		}
	}
	br := s.headerReader(c)
	defer s.putHeaderReader(br)
	addr, err := readConnect(br, s.cfg.MaxHeaderBytes)
	if err != nil {
		var re *requestError
		if !errors.As(err, &re) { // the client went away or stalled
			s.headerLimit(err, 0)
			s.log.Info("frontend request not read", append(timeoutFlag(err), "remote", remoteName(c), "err", err)...)
			return
		}
		s.headerLimit(nil, re.status)
		s.log.Info("frontend request rejected", "remote", remoteName(c), "status", re.status, "err", re.msg)
		s.answer(c, re.status, re.msg)
		return
	}
	c.SetReadDeadline(time.Time{})
	ctx, stop := watchHangup(s.ctx, c, br)
	tunnel, err := s.Dial(ctx, addr)
	stop()
	leftover, _ := br.Peek(br.Buffered())
	if err != nil {
		var de *DialError
		if errors.As(err, &de) {
			s.answer(c, de.HTTPStatus(), de.Error())
		} else {
			s.answer(c, http.StatusBadGateway, err.Error())
		}
		return
	}
	s.metrics.frontendAnswered(http.StatusOK)
	if _, err := c.Write(connectOK); err != nil {
		tunnel.Close()
		return
	}
	if len(leftover) > 0 { // bytes the client sent early belong to the tunnel
		if _, err := tunnel.Write(leftover); err != nil {
			tunnel.Close()
			return
		}
		s.metrics.toNode.Add(float64(len(leftover)))
	}
	kept = true
	end := keep()
	s.carry(c, tunnel, func() { c.Close(); end() }) // move.go
}

// headerReader returns a reader of MaxHeaderBytes for c's CONNECT request,
// from the pool: a fresh one per request would be most of what a tunnel
// allocates. The caller puts it back once it is done with the bytes it
// buffered; they are overwritten by the next request read with it.
func (s *Server) headerReader(c net.Conn) *bufio.Reader {
	if br, ok := s.headers.Get().(*bufio.Reader); ok {
		br.Reset(c)
		return br
	}
	return bufio.NewReaderSize(c, s.cfg.MaxHeaderBytes)
}

func (s *Server) putHeaderReader(br *bufio.Reader) {
	br.Reset(nil) // holds on to no connection while pooled
	s.headers.Put(br)
}

// timeoutFlag returns the log attributes that name --connect-header-timeout
// when err is that timeout passing, and none otherwise.
func timeoutFlag(err error) []any {
	if isTimeout(err) {
		return []any{"flag", limitFlags[LimitHeaderTimeout]}
	}
	return nil
}

// remoteName names a frontend client in logs: its address, or "uds" for a
// unix-socket client whose end has no name (most have none, and show as
// "@" or nothing). A listener that knows better, such as one that reads
// the peer's credentials, returns connections whose RemoteAddr says so.
func remoteName(c net.Conn) string {
	a := c.RemoteAddr()
	if a == nil {
		return "unknown"
	}
	if ua, ok := a.(*net.UnixAddr); ok && (ua.Name == "" || ua.Name == "@") {
		return "uds"
	}
	return a.String()
}

// watchHangup returns a context for the dial a CONNECT waits on, which
// ends if the client hangs up first: a dial nobody waits for stops, on the
// server and on the node, as soon as the watch (after watchAfter) sees it.
// It reads through br, so bytes the client
// sends early stay in br for the tunnel (and end the watch). stop ends the
// watch and leaves c's read deadline clear.
func watchHangup(parent context.Context, c net.Conn, br *bufio.Reader) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	end := lateWatch(func() { // watch.go: only a dial slower than watchAfter is watched
		if _, err := br.Peek(1); err != nil && !isTimeout(err) {
			cancel(fmt.Errorf("client hung up: %w", err))
		}
	}, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	return ctx, func() {
		end()
		c.SetReadDeadline(time.Time{})
		cancel(nil)
	}
}

// answer writes an error status and counts it.
func (s *Server) answer(w io.Writer, code int, reason string) {
	s.metrics.frontendAnswered(code)
	writeStatus(w, code, reason)
}

// readConnect reads one CONNECT request of at most max bytes from br and
// returns its target "host:port". It consumes the request's bytes and
// nothing after them. Errors other than *requestError mean the connection
// failed or stalled before a whole request arrived.
func readConnect(br *bufio.Reader, max int) (string, error) {
	line, err := readLine(br, &max)
	if err != nil {
		return "", err
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || strings.Contains(proto, " ") {
		return "", badRequest(http.StatusBadRequest, "malformed request line")
	}
	if proto != "HTTP/1.1" && proto != "HTTP/1.0" {
		return "", badRequest(http.StatusBadRequest, "unsupported protocol %q", proto)
	}
	for { // headers: checked for form and size, otherwise ignored
		h, err := readLine(br, &max)
		if err != nil {
			return "", err
		}
		if h == "" {
			break
		}
		if name, _, ok := strings.Cut(h, ":"); !ok || name == "" || strings.ContainsAny(name, " \t") {
			return "", badRequest(http.StatusBadRequest, "malformed header line")
		}
	}
	if method != http.MethodConnect {
		return "", badRequest(http.StatusMethodNotAllowed, "method %s not allowed; only CONNECT", quoteShort(method))
	}
	if err := checkTarget(target); err != nil {
		return "", err
	}
	return target, nil
}

// readLine reads one CRLF- or LF-terminated line, charging its length to
// *budget; a request over budget is rejected with 431.
func readLine(br *bufio.Reader, budget *int) (string, error) {
	b, err := br.ReadSlice('\n')
	*budget -= len(b)
	if errors.Is(err, bufio.ErrBufferFull) || *budget < 0 {
		return "", badRequest(http.StatusRequestHeaderFieldsTooLarge, "request header too large (%s)", limitFlags[LimitHeaderSize])
	}
	if err != nil {
		return "", err
	}
	b = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
	if bytes.ContainsAny(b, "\r\x00") {
		return "", badRequest(http.StatusBadRequest, "control character in request")
	}
	return string(b), nil
}

// checkTarget accepts what splitTarget accepts.
func checkTarget(target string) error {
	if _, _, err := splitTarget(target); err != nil {
		return badRequest(http.StatusBadRequest, "CONNECT target %v", err)
	}
	return nil
}

// quoteShort quotes s for an error message, cut to a readable length.
func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
}

// writeStatus answers with an error status whose reason phrase is reason,
// and the same text as a body for people using curl.
func writeStatus(w io.Writer, code int, reason string) {
	reason = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, reason)
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		code, reason, len(reason)+1, reason)
}

// FrontendClientPolicy returns a tls.Config.VerifyConnection check for the
// TCP frontend. A client whose Subject CN is in names passes. Otherwise it
// refuses every certificate that proves a node identity by the agent port's
// own rule (certs.NodeNames) — an agent's key must not be able to open
// tunnels to other nodes — and, when names is not empty, every other
// client too.
func FrontendClientPolicy(names []string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tunnel: frontend requires a client certificate")
		}
		leaf := cs.PeerCertificates[0]
		switch cn := leaf.Subject.CommonName; {
		case slices.Contains(names, cn):
			return nil
		case len(certs.NodeNames(leaf)) > 0:
			return fmt.Errorf("tunnel: node certificate for %v may not use the frontend (name it in --frontend-allowed-names to allow it)", certs.NodeNames(leaf))
		case len(names) > 0:
			return fmt.Errorf("tunnel: frontend client %q is not in the allowed names (--frontend-allowed-names)", cn)
		}
		return nil
	}
}
