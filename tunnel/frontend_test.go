package tunnel

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// TestFrontendRefusalsLoggedOnce: each refused CONNECT is logged once,
// by the layer that refused it, with its client named ("uds" for an
// unnamed unix-socket client, never "@") and, for a limit, the flag that
// sets it.
func TestFrontendRefusalsLoggedOnce(t *testing.T) {
	log, rec := recordLogs(t)
	h := newHarness(t, func(c *ServerConfig) { c.Logger = log; c.MaxHeaderBytes = 512 })
	for _, tc := range []struct {
		req    string // the request; its marker is logged once
		marker string
		status int
		parts  []string // in the one line
	}{
		{"GET /marker-get HTTP/1.1\r\n\r\n", "GET", http.StatusMethodNotAllowed, []string{`msg="frontend request rejected"`, "remote=uds ", "status=405"}},
		{"CONNECT 10.0.0.1:80 HTTP/1.1\r\nX-Marker-Big: " + strings.Repeat("a", 600) + "\r\n\r\n", "request header too large", http.StatusRequestHeaderFieldsTooLarge,
			[]string{`msg="frontend request rejected"`, "remote=uds ", "status=431", "(--max-connect-header-bytes)"}},
		{"CONNECT 10.77.0.1:80 HTTP/1.1\r\n\r\n", "10.77.0.1", http.StatusBadGateway, []string{`msg="dial failed"`, "dest=10.77.0.1:80", "no agent for 10.77.0.1"}},
		{"CONNECT 10.77.0.2:99999 HTTP/1.1\r\n\r\n", "99999", http.StatusBadRequest, []string{`msg="frontend request rejected"`, "remote=uds ", "status=400"}},
	} {
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, tc.req)
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || res.StatusCode != tc.status {
			t.Fatalf("%q: %v %v, want %d", tc.req[:20], res, err, tc.status)
		}
		var lines []string
		waitFor(t, "the refusal to be logged", func() bool { lines = rec.matching(tc.marker); return len(lines) > 0 })
		if len(lines) != 1 || !all(tc.parts, func(p string) bool { return strings.Contains(lines[0], p) }) {
			t.Errorf("%q logged %d lines %q; want one with %q", tc.marker, len(lines), lines, tc.parts)
		}
	}
	if rec.has("remote=@") {
		t.Error(`a unix-socket client was logged as remote=@`)
	}
}

// matching returns the lines that hold s.
func (r *logRecord) matching(s string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range r.lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

func TestRemoteName(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, server := connPair(t, ln)
	if got := remoteName(server); got != "uds" {
		t.Errorf("unnamed unix client: %q, want uds", got)
	}
	tcp := listenTCP(t, "127.0.0.1:0")
	tc, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if got := remoteName(tc); got != tcp.Addr().String() {
		t.Errorf("TCP: %q, want %q", got, tcp.Addr())
	}
}

// TestRefusalsNameTheirFlag: what a client is told when a limit or the
// frontend's client policy refuses it names the flag that would change it.
func TestRefusalsNameTheirFlag(t *testing.T) {
	_, err := readConnect(bufio.NewReaderSize(strings.NewReader("CONNECT a:1 HTTP/1.1\r\nX: "+strings.Repeat("a", 300)+"\r\n\r\n"), 256), 256)
	var re *requestError
	if !errors.As(err, &re) || re.status != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(re.msg, "--max-connect-header-bytes") {
		t.Errorf("oversized request: %v, want 431 naming --max-connect-header-bytes", err)
	}
}
