package tunnel

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// handoffPeer checks that the process at the other end of a handoff
// socket runs as this agent's user.
func handoffPeer(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	switch {
	case cerr != nil:
		return cerr
	case int(cred.Uid) != os.Geteuid():
		return fmt.Errorf("handoff peer pid %d runs as uid %d, not %d", cred.Pid, cred.Uid, os.Geteuid())
	}
	return nil
}
