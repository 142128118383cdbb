package mux

import (
	"io"
	"net"
	"sync"
)

// Read buffer sizes. The read loop waits for the next frame reading into
// its own small buffer; while frames stream it reads into a pooled
// readBufferSize buffer. Bodies at least readBufferSize long go from the
// connection straight into the stream's receive buffer.
const (
	smallRead      = 512
	readBufferSize = 16 << 10
)

// readBufs holds the large read buffers of sessions that are not streaming.
var readBufs = sync.Pool{New: func() any { return new([readBufferSize]byte) }}

// connReader buffers the connection for the read loop, as a bufio.Reader
// would, without pinning a large buffer to a quiet session: an idle agent
// costs the server 512 bytes here, not 16 KiB. A read that fills the small
// buffer means more is waiting, so the next read goes into a pooled large
// buffer, and so on while each read brings at least a quarter of one; the
// large buffer goes back to its pool as soon as it is empty. Only the read
// loop reads, so no lock.
type connReader struct {
	conn  net.Conn
	small [smallRead]byte
	big   *[readBufferSize]byte // in use while bulk or holding buf
	bulk  bool                  // the last read filled its buffer: read into big next
	buf   []byte                // buffered: a tail of small or of *big
	err   error                 // of the read that filled buf, returned once it is used
}

func (c *connReader) buffered() int { return len(c.buf) }

// Read reads buffered bytes, or fills the buffer first; a read at least as
// long as the large buffer goes straight to the connection.
func (c *connReader) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		if err := c.err; err != nil {
			c.err = nil
			return 0, err
		}
		if len(p) >= readBufferSize {
			return c.conn.Read(p)
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.buf)
	c.consume(n)
	return n, nil
}

// discard drops n bytes.
func (c *connReader) discard(n int) error {
	for n > 0 {
		if len(c.buf) == 0 {
			if err := c.err; err != nil {
				c.err = nil
				return err
			}
			if err := c.fill(); err != nil {
				return err
			}
		}
		k := min(n, len(c.buf))
		c.consume(k)
		n -= k
	}
	return nil
}

// fill reads into the empty buffer: the large one while bulk.
func (c *connReader) fill() error {
	dst := c.small[:]
	if c.bulk {
		if c.big == nil {
			c.big = readBufs.Get().(*[readBufferSize]byte)
		}
		dst = c.big[:]
	}
	n, err := c.conn.Read(dst)
	c.bulk = n == len(dst) || c.bulk && n >= len(dst)/4
	c.buf, c.err = dst[:n], err
	if n == 0 {
		c.consume(0)
		c.err = nil
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	return nil
}

// consume marks n buffered bytes used. Once the buffer is empty the large
// one goes back to its pool unless the next read needs it.
func (c *connReader) consume(n int) {
	c.buf = c.buf[n:]
	if len(c.buf) > 0 {
		return
	}
	c.buf = nil // an empty tail would still pin the large buffer
	if c.big != nil && !c.bulk {
		readBufs.Put(c.big)
		c.big = nil
	}
}
