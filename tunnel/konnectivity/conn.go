package konnectivity

import (
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/peer"
	proxy "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// conn is the client's end of one gRPC frontend tunnel as a net.Conn,
// so that the server's one copy path (Server.Pipe) carries it: Read takes
// DATA payloads from the stream's receive loop, Write sends DATA, Close
// answers CLOSE_RSP.
//
// It has no CloseWrite: the Konnectivity client takes CLOSE_RSP as the end
// of the whole connection, so when the node side finishes, Close tells the
// client and the tunnel closes both ways.
type conn struct {
	ps     *proxyStream
	id     int64  // connectID
	rest   []byte // the unread part of the last DATA payload
	closed chan struct{}
	once   sync.Once
}

// Read returns the next bytes of DATA. The receive loop's end is the
// tunnel's: io.EOF when the client half-closed the stream, its error
// otherwise (CLOSE_REQ, DIAL_CLS, a broken stream).
func (c *conn) Read(b []byte) (int, error) {
	if len(c.rest) == 0 {
		select {
		case d, ok := <-c.ps.data:
			if !ok {
				return 0, c.ps.recvErr
			}
			c.rest = d
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	n := copy(b, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}

// Write sends b as DATA packets of at most maxData bytes; it never sends
// an empty one.
func (c *conn) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		select {
		case <-c.closed:
			return n, net.ErrClosed
		default:
		}
		chunk := b[n:min(len(b), n+maxData)]
		err := c.ps.send(&proxy.Packet{Type: proxy.PacketType_DATA, Payload: &proxy.Packet_Data{
			Data: &proxy.Data{ConnectID: c.id, Data: chunk}}})
		if err != nil {
			return n, err
		}
		n += len(chunk)
	}
	return n, nil
}

// Close sends CLOSE_RSP once, the client's sign that the connection is
// over, whichever side ended it. The stream itself ends when Proxy returns.
func (c *conn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.ps.send(&proxy.Packet{Type: proxy.PacketType_CLOSE_RSP, Payload: &proxy.Packet_CloseResponse{
			CloseResponse: &proxy.CloseResponse{ConnectID: c.id}}})
	})
	return nil
}

// LocalAddr returns the socket's address, if gRPC knows it.
func (c *conn) LocalAddr() net.Addr {
	if p, ok := peer.FromContext(c.ps.stream.Context()); ok && p.LocalAddr != nil {
		return p.LocalAddr
	}
	return &net.UnixAddr{Net: "unix"}
}

// RemoteAddr returns the client's address, if gRPC knows it.
func (c *conn) RemoteAddr() net.Addr {
	if p, ok := peer.FromContext(c.ps.stream.Context()); ok && p.Addr != nil {
		return p.Addr
	}
	return &net.UnixAddr{Net: "unix"}
}

// SetDeadline and the others fail: the copy path sets none, and a gRPC
// stream has no per-operation deadline.
func (c *conn) SetDeadline(time.Time) error      { return errDeadline }
func (c *conn) SetReadDeadline(time.Time) error  { return errDeadline }
func (c *conn) SetWriteDeadline(time.Time) error { return errDeadline }
