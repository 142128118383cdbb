package tunnel

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ListenUnix listens on a unix socket at path with the given file mode;
// it is ListenUnixGroup without a group change.
func ListenUnix(path string, mode fs.FileMode) (net.Listener, error) {
	return ListenUnixGroup(path, mode, -1)
}

// ListenUnixGroup listens on a unix socket at path with the given file
// mode and, if gid is not negative, group. A stale socket file left by a
// dead process is replaced; a socket that still answers is never taken
// over, and a path that is not a socket is never removed.
//
// The socket never exists at path with other permissions: bind applies
// the process umask, so the socket is bound in a new directory of mode
// 0700 beside path (where no one else can reach it), given its mode and
// group there, and renamed into place. Setting the umask around bind
// instead would change it for every goroutine of the process. The
// listener's Addr is path, and Close removes path if it is still this
// socket. (The kernel keeps the name the socket was bound to, so a client
// sees DIR/.tunnel-NNN/NAME as its peer address.)
func ListenUnixGroup(path string, mode fs.FileMode, gid int) (net.Listener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".tunnel-")
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	defer os.Remove(dir)
	tmp := filepath.Join(dir, filepath.Base(path))
	if len(tmp) > maxUnixPath { // sun_path is short; the private directory makes the path longer
		tmp = filepath.Join(dir, "s")
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	err = os.Chmod(tmp, mode)
	if err == nil && gid >= 0 {
		err = os.Lchown(tmp, -1, gid)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	var fi fs.FileInfo
	if err == nil {
		fi, err = os.Lstat(path)
	}
	if err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	return &unixListener{UnixListener: ln, path: path, file: fi}, nil
}

// maxUnixPath is the longest socket path Linux binds (sun_path less its NUL).
const maxUnixPath = 107

// removeStale removes a socket file at path that no process answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("tunnel: %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("tunnel: another process is listening on %s", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("tunnel: removing stale socket: %w", err)
	}
	return nil
}

// unixListener is a unix socket listener renamed into place at path.
type unixListener struct {
	*net.UnixListener
	path string
	file fs.FileInfo // the socket file, to remove only it on Close
	once sync.Once
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.file) {
			os.Remove(l.path)
		}
	})
	return err
}
