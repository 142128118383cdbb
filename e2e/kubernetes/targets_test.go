//go:build linux

package kubernetes

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// Ports of the pods' targets.
const (
	echoPort = 7000 // TCP echo: port-forward's target
	httpPort = 8080 // HTTP: pod proxy and service proxy
)

// serveEcho runs a TCP echo server on addr inside ns until the test ends.
func serveEcho(t *testing.T, ns netns, addr string) {
	t.Helper()
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("echo listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// serveHTTP runs h on addr inside ns until the test ends, over TLS if
// tlsCfg is set (offering HTTP/2 as well).
func serveHTTP(t *testing.T, ns netns, addr string, tlsCfg *tls.Config, h http.Handler) {
	t.Helper()
	serveHTTPServer(t, ns, addr, &http.Server{Handler: h, TLSConfig: tlsCfg, ReadHeaderTimeout: time.Minute})
}

// serveHTTPServer runs srv on addr inside ns until the test ends.
func serveHTTPServer(t *testing.T, ns netns, addr string, srv *http.Server) {
	t.Helper()
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	tlsCfg := srv.TLSConfig
	t.Cleanup(func() { srv.Close() })
	if tlsCfg != nil {
		go srv.ServeTLS(l, "", "")
		return
	}
	go srv.Serve(l)
}

// podHandler answers every request with the pod's name, the method and the
// path it was asked for, so proxies can be told apart and checked.
func podHandler(pod string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pod %s: %s %s", pod, r.Method, r.URL.Path)
	})
}

// isolated fails the test if addr is reachable from ns without the tunnel.
func isolated(t *testing.T, ns netns, addr string) {
	t.Helper()
	c, err := ns.DialContext(t.Context(), "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("%s is reachable from %s directly: the test would prove nothing", addr, ns)
	}
	t.Logf("direct dial from %s to %s: %v", ns, addr, err)
}
