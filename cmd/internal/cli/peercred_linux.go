package cli

import (
	"fmt"
	"net"
	"syscall"
)

// peerCred returns "uds:pid=PID,uid=UID" for the process at the other end
// of c, as the kernel recorded it when that process connected.
func peerCred(c *net.UnixConn) (string, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", false
	}
	var cred *syscall.Ucred
	var credErr error
	err = rc.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || credErr != nil {
		return "", false
	}
	return fmt.Sprintf("uds:pid=%d,uid=%d", cred.Pid, cred.Uid), true
}
