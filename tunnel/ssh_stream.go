package tunnel

import (
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshStream adapts an ssh.Channel to net.Conn. Close ends the channel both
// ways (SSH_MSG_CHANNEL_CLOSE); CloseWrite sends SSH_MSG_CHANNEL_EOF and
// leaves the other direction flowing, which is what the copy path's
// half-close needs.
//
// Deadlines. SSH channels have none, and a Read or Write blocked in
// x/crypto/ssh cannot be woken without ending the channel. So a deadline
// here is a timer: when it passes, the stream is closed, and the Read or
// Write it interrupted — and every one after it — returns
// os.ErrDeadlineExceeded (a net.Error whose Timeout is true), as a net.Conn
// would. Unlike a socket, a stream whose deadline has passed cannot be used
// again. The tunnel uses deadlines only to bound handshakes (hello, dial
// request and answer), where a missed deadline ends the stream anyway, and
// clears them before any tunneled byte flows.
type sshStream struct {
	ssh.Channel
	sess *sshSession

	mu      sync.Mutex
	read    streamDeadline
	write   streamDeadline
	expired bool // a deadline passed and closed the stream
}

// streamDeadline is one direction's deadline timer. gen tells a timer
// that fires after being replaced to do nothing.
type streamDeadline struct {
	t   *time.Timer
	gen uint64
}

func (c *sshStream) LocalAddr() net.Addr  { return c.sess.conn.LocalAddr() }
func (c *sshStream) RemoteAddr() net.Addr { return c.sess.conn.RemoteAddr() }

func (c *sshStream) Read(p []byte) (int, error) {
	if c.timedOut() {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := c.Channel.Read(p)
	if err != nil && c.timedOut() {
		err = os.ErrDeadlineExceeded
	}
	return n, err
}

func (c *sshStream) Write(p []byte) (int, error) {
	if c.timedOut() {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := c.Channel.Write(p)
	switch {
	case err == nil:
	case c.timedOut():
		err = os.ErrDeadlineExceeded
	case err != io.EOF: // not the channel but the connection failed
		c.sess.fail()
	}
	return n, err
}

func (c *sshStream) timedOut() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.expired
}

// Close stops the deadline timers and closes the channel.
func (c *sshStream) Close() error {
	c.mu.Lock()
	c.read.stop()
	c.write.stop()
	c.mu.Unlock()
	return c.Channel.Close()
}

func (c *sshStream) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *sshStream) SetReadDeadline(t time.Time) error  { return c.set(&c.read, t) }
func (c *sshStream) SetWriteDeadline(t time.Time) error { return c.set(&c.write, t) }

// set replaces d with a timer for t; a zero t clears it, and a t already
// past closes the stream at once.
func (c *sshStream) set(d *streamDeadline, t time.Time) error {
	if c.arm(d, t) {
		c.Channel.Close()
	}
	return nil
}

// arm sets d's timer and reports whether t has already passed, in which
// case the caller closes the channel (not under c.mu: closing may wait for
// the connection's writer).
func (c *sshStream) arm(d *streamDeadline, t time.Time) (expiredNow bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d.stop()
	if t.IsZero() || c.expired {
		return false
	}
	wait := time.Until(t)
	if wait <= 0 {
		c.expired = true
		return true
	}
	gen := d.gen
	d.t = time.AfterFunc(wait, func() {
		c.mu.Lock()
		fire := d.gen == gen && !c.expired
		c.expired = c.expired || fire
		c.mu.Unlock()
		if fire {
			c.Channel.Close()
		}
	})
	return false
}

func (d *streamDeadline) stop() {
	d.gen++
	if d.t != nil {
		d.t.Stop()
		d.t = nil
	}
}
