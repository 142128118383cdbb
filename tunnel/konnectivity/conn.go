package konnectivity

import (
	"net"
	"os"
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

	dmu     sync.Mutex
	expired chan struct{} // closed once the read deadline has passed
	timer   *time.Timer   // closes expired at a future deadline
}

// Read returns the next bytes of DATA. The receive loop's end is the
// tunnel's: io.EOF when the client half-closed the stream, its error
// otherwise (CLOSE_REQ, DIAL_CLS, a broken stream).
func (c *conn) Read(b []byte) (int, error) {
	if len(c.rest) == 0 {
		select {
		case <-c.readExpired():
			return 0, os.ErrDeadlineExceeded
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

// SetReadDeadline makes a waiting or later Read return
// os.ErrDeadlineExceeded once t has passed, consuming nothing: the server
// stops reading this way to move the tunnel to another agent. A zero t
// clears it.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if c.expired == nil || isClosed(c.expired) {
		c.expired = make(chan struct{})
	}
	if !t.IsZero() {
		exp := c.expired
		c.timer = time.AfterFunc(time.Until(t), func() {
			c.dmu.Lock()
			defer c.dmu.Unlock()
			if !isClosed(exp) { // a timer stopped too late, or the next one
				close(exp)
			}
		})
	}
	return nil
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// readExpired returns the channel that closes when the read deadline passes.
func (c *conn) readExpired() chan struct{} {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.expired == nil {
		c.expired = make(chan struct{})
	}
	return c.expired
}

// SetDeadline sets the read deadline only, and SetWriteDeadline fails: a
// gRPC stream's send has no per-operation deadline.
func (c *conn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(time.Time) error { return errDeadline }
