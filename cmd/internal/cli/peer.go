package cli

import "net"

// PeerListener wraps a unix-socket listener so that each connection it
// accepts names its client in logs by the credentials the kernel recorded
// for the process that connected (SO_PEERCRED on Linux): its RemoteAddr
// reads "uds:pid=123,uid=0". A client's own end of a unix socket is
// usually unnamed, so without this every one of them shows as "@". The
// connections are the listener's own *net.UnixConn under a thin wrapper
// that changes RemoteAddr alone: half-close and the copy path's readiness
// wait work as on the bare connection. Where credentials cannot be read,
// the name is "uds".
func PeerListener(ln net.Listener) net.Listener { return peerListener{ln} }

type peerListener struct{ net.Listener }

func (l peerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c, nil
	}
	name, ok := peerCred(uc) // peercred_*.go
	if !ok {
		name = "uds"
	}
	return &peerConn{UnixConn: uc, addr: peerAddr(name)}, nil
}

// peerConn is a unix-socket connection named by its peer's credentials.
type peerConn struct {
	*net.UnixConn
	addr peerAddr
}

// RemoteAddr returns the peer's credentials as an address.
func (c *peerConn) RemoteAddr() net.Addr { return c.addr }

// peerAddr is a unix-socket client named by its credentials.
type peerAddr string

func (a peerAddr) Network() string { return "unix" }
func (a peerAddr) String() string  { return string(a) }
