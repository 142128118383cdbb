package tunnel

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestListenUnixModeAndGroup: the socket has the mode and group asked for,
// Addr names its path, nothing else is left beside it, a live socket is
// never taken over, and Close removes it.
func TestListenUnixModeAndGroup(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "connect.sock")
	groups, err := os.Getgroups()
	if err != nil || len(groups) == 0 {
		groups = []int{os.Getgid()}
	}
	gid := groups[len(groups)-1]
	ln, err := ListenUnixGroup(path, 0o660, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	if got := int(fi.Sys().(*syscall.Stat_t).Gid); got != gid {
		t.Errorf("socket group %d, want %d", got, gid)
	}
	if got := ln.Addr().String(); got != path {
		t.Errorf("Addr %s, want %s", got, path)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the socket", len(entries))
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dialing the renamed socket: %v", err)
	}
	c.Close()
	if _, err := ListenUnix(path, 0o600); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still there after Close: %v", err)
	}
}

// TestListenUnixDefaultMode: mode 0600 whatever the umask, and a stale
// socket file is replaced.
func TestListenUnixDefaultMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	old := syscall.Umask(0) // the most permissive umask: bind would make 0777
	t.Cleanup(func() { syscall.Umask(old) })
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close() // leaves the file, as a killed process would
	ln, err := ListenUnix(path, 0o600)
	if err != nil {
		t.Fatalf("replacing a stale socket: %v", err)
	}
	defer ln.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", fi.Mode(), err)
	}
}
