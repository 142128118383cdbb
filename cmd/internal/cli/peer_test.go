package cli

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
)

// TestPeerListener: a unix-socket client is named by its credentials,
// and the connection still half-closes and exposes its socket as the bare
// *net.UnixConn does.
func TestPeerListener(t *testing.T) {
	raw, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln := PeerListener(raw)
	defer ln.Close()
	client, err := net.Dial("unix", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if got := client.LocalAddr().String(); got != "" && got != "@" {
		t.Logf("the client's end is named %q; most are not", got)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := "uds"
	if runtime.GOOS == "linux" {
		want = fmt.Sprintf("uds:pid=%d,uid=%d", os.Getpid(), os.Getuid())
	}
	if got := c.RemoteAddr().String(); got != want || c.RemoteAddr().Network() != "unix" {
		t.Errorf("RemoteAddr() = %s %q, want unix %q", c.RemoteAddr().Network(), got, want)
	}
	if _, ok := c.(syscall.Conn); !ok {
		t.Error("the connection hides its socket (syscall.Conn)")
	}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("the connection cannot half-close")
	}
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(client); err != nil || string(b) != "hi" {
		t.Errorf("client read %q, %v after CloseWrite; want \"hi\", EOF", b, err)
	}
}
