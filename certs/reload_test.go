package certs

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rotation is a working directory whose files a test swaps between two
// independently generated PKIs, under a real TLS server on loopback.
type rotation struct {
	t       *testing.T
	dir     string
	a, b    fixture
	ln      net.Listener
	server  *tls.Config
	client  *tls.Config
	reloads []interface{ Reload() (bool, error) }
}

const (
	wServerCert = "server.crt"
	wServerKey  = "server.key"
	wClientCA   = "client-ca.crt" // the server's bundle for client certificates
	wClientCert = "client.crt"
	wClientKey  = "client.key"
	wServerCA   = "server-ca.crt" // the client's bundle for the server
)

func newRotation(t *testing.T) *rotation {
	r := &rotation{t: t, dir: t.TempDir(), a: generate(t), b: generate(t)}
	r.install(r.a)
	pair, err := ReloadingKeyPair(r.path(wServerCert), r.path(wServerKey))
	if err != nil {
		t.Fatal(err)
	}
	clientCAs, err := ReloadingPool(r.path(wClientCA))
	if err != nil {
		t.Fatal(err)
	}
	cpair, err := ReloadingKeyPair(r.path(wClientCert), r.path(wClientKey))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ReloadingPool(r.path(wServerCA))
	if err != nil {
		t.Fatal(err)
	}
	r.reloads = append(r.reloads, pair, clientCAs, cpair, roots)
	r.server = ServerTLS(pair, clientCAs)
	r.client = ClientTLS(cpair, roots, "localhost")

	if r.ln, err = tls.Listen("tcp", "127.0.0.1:0", r.server); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.ln.Close() })
	go func() {
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return r
}

func (r *rotation) path(name string) string { return filepath.Join(r.dir, name) }

// install copies fx's files into the working directory, each by rename so
// that no reader ever sees a half-written file.
func (r *rotation) install(fx fixture) {
	for name, src := range map[string]string{
		wServerCert: fx.files.ServerCert, wServerKey: fx.files.ServerKey, wClientCA: fx.files.CACert,
		wClientCert: fx.files.ClientCert, wClientKey: fx.files.ClientKey, wServerCA: fx.files.CACert,
	} {
		data, err := os.ReadFile(src)
		if err != nil {
			r.t.Fatal(err)
		}
		r.write(name, data)
	}
}

func (r *rotation) write(name string, data []byte) {
	tmp := r.path(name + ".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Rename(tmp, r.path(name)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rotation) reloadAll() (changed int, errs []error) {
	for _, rl := range r.reloads {
		ok, err := rl.Reload()
		if ok {
			changed++
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return changed, errs
}

// dial handshakes with cfg and checks one echo.
func (r *rotation) dial(cfg *tls.Config) (*tls.Conn, error) {
	c, err := tls.Dial("tcp", r.ln.Addr().String(), cfg)
	if err != nil {
		return nil, err
	}
	if err := echo(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func echo(c net.Conn) error {
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	_, err := io.ReadFull(c, buf)
	return err
}

// staticClient is a client that trusts only fx's CA and presents fx's
// client certificate, with crypto/tls's own verification.
func staticClient(fx fixture) *tls.Config {
	return &tls.Config{RootCAs: fx.pool, Certificates: []tls.Certificate{fx.client}, ServerName: "localhost"}
}

func TestReloadRotatesWithoutDroppingConnections(t *testing.T) {
	r := newRotation(t)
	old, err := r.dial(r.client)
	if err != nil {
		t.Fatalf("handshake with the first PKI: %v", err)
	}
	defer old.Close()
	if n, errs := r.reloadAll(); n != 0 || errs != nil {
		t.Fatalf("reload with unchanged files: %d changed, errors %v", n, errs)
	}

	r.install(r.b)
	if n, errs := r.reloadAll(); n != 4 || errs != nil {
		t.Fatalf("reload after rotation: %d of 4 changed, errors %v", n, errs)
	}
	if err := echo(old); err != nil {
		t.Fatalf("connection established before the rotation broke: %v", err)
	}
	c, err := r.dial(r.client)
	if err != nil {
		t.Fatalf("handshake with the rotated material: %v", err)
	}
	c.Close()
	if c, err := r.dial(staticClient(r.b)); err != nil {
		t.Fatalf("a client of the new PKI is refused: %v", err)
	} else {
		c.Close()
	}
	if _, err := r.dial(staticClient(r.a)); err == nil {
		t.Fatal("a client of the old PKI still gets in after the rotation")
	}
}

func TestReloadKeepsOldMaterialOnBrokenFile(t *testing.T) {
	r := newRotation(t)
	r.write(wServerCert, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"))
	r.write(wClientCA, []byte("not a bundle"))
	n, errs := r.reloadAll()
	if n != 0 || len(errs) != 2 {
		t.Fatalf("reload of broken files: %d changed, errors %v; want 0 changed and 2 errors", n, errs)
	}
	os.Remove(r.path(wServerCA))
	if _, errs := r.reloadAll(); len(errs) != 3 || !strings.Contains(errs[2].Error(), wServerCA) {
		t.Fatalf("a missing file: errors %v, want 3 naming %s", errs, wServerCA)
	}
	c, err := r.dial(r.client)
	if err != nil {
		t.Fatalf("broken files took the old material away: %v", err)
	}
	c.Close()
	if c, err := r.dial(staticClient(r.a)); err != nil {
		t.Fatalf("old PKI no longer served after a failed reload: %v", err)
	} else {
		c.Close()
	}
}

// TestClientTLSVerifiesServer checks the verification ClientTLS does in
// place of crypto/tls's: an unknown CA, a wrong name and a certificate
// meant for clients are each refused.
func TestClientTLSVerifiesServer(t *testing.T) {
	r := newRotation(t)
	otherRoots := r.b.files.CACert
	roots, err := ReloadingPool(otherRoots)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ReloadingKeyPair(r.a.files.ClientCert, r.a.files.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.dial(ClientTLS(pair, roots, "localhost")); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("server of an unknown CA: %v, want unknown authority", err)
	}
	goodRoots, err := ReloadingPool(r.a.files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := r.dial(ClientTLS(pair, goodRoots, "127.0.0.1")); err != nil {
		t.Errorf("server certificate with the IP SAN 127.0.0.1, verified for that IP: %v", err)
	} else {
		c.Close()
	}
	if _, err := r.dial(ClientTLS(pair, goodRoots, "tunnel.example")); err == nil || !strings.Contains(err.Error(), "tunnel.example") {
		t.Errorf("server certificate for another name: %v, want a name mismatch", err)
	}

	// A server presenting a client certificate must not pass as a server.
	agent := r.a.files.Agents["node-a"]
	clientPair, err := ReloadingKeyPair(agent[0], agent[1])
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerTLS(clientPair, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	name := clientPair.Current().Leaf.IPAddresses[0].String() // a name the certificate does hold
	c, err := tls.Dial("tcp", ln.Addr().String(), ClientTLS(pair, goodRoots, name))
	if err == nil || !strings.Contains(err.Error(), "key usage") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("an agent's client certificate presented by a server: %v, want a key usage error", err)
	}
}
