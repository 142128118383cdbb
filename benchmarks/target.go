package benchmarks

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// Buffer sizes of the target. Echo connections are many and mostly idle, so
// their buffer is small; sink and source move bulk data.
const (
	echoBufSize = 16 << 10
	bulkBufSize = 256 << 10
	// ChunkSize is the size of each write of a pattern stream, by the target's
	// source and by Upload.
	ChunkSize = 128 << 10
)

// HeaderTimeout bounds how long the target waits for a connection's Header.
const HeaderTimeout = 10 * time.Second

// Target serves the benchmark protocol (see the package documentation) on a
// listener. Its zero value is not usable; call NewTarget.
type Target struct {
	connServer
	failures atomic.Int64
}

// NewTarget returns a target for ln; call Serve to run it.
func NewTarget(ln net.Listener) *Target {
	return &Target{connServer: connServer{ln: ln}}
}

// Failures returns how many sink streams arrived corrupted.
func (t *Target) Failures() int64 { return t.failures.Load() }

// Serve accepts connections until Close, each served in a goroutine the
// target owns. Temporary accept errors (out of descriptors) are retried.
func (t *Target) Serve() error { return t.serve(t.serveConn) }

// Close stops the listener, closes every connection and waits for their
// goroutines.
func (t *Target) Close() error { return t.closeAll() }

// serveConn reads the header and runs its mode.
func (t *Target) serveConn(c net.Conn) {
	var hb [HeaderLen]byte
	c.SetReadDeadline(time.Now().Add(HeaderTimeout))
	if _, err := io.ReadFull(c, hb[:]); err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	h, err := parseHeader(hb[:])
	if err != nil {
		return
	}
	switch h.Mode {
	case ModeEcho:
		serveEcho(c)
	case ModeSink:
		t.serveSink(c, h)
	case ModeSource:
		serveSource(c, h)
	}
}

// serveEcho echoes until EOF, then half-closes.
func serveEcho(c net.Conn) {
	buf := make([]byte, echoBufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				closeWrite(c)
			}
			return
		}
	}
}

// serveSink verifies the client's stream until EOF and answers with the
// count and the first mismatch.
func (t *Target) serveSink(c net.Conn, h Header) {
	v := NewVerifier(NewPattern(h.Seed))
	res := SinkResult{Mismatch: -1}
	buf := make([]byte, bulkBufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 && res.Mismatch < 0 {
			var me *MismatchError
			if errors.As(v.Check(buf[:n]), &me) {
				res.Mismatch = me.Offset
				t.failures.Add(1)
			}
		}
		res.Received += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return
		}
	}
	c.Write(res.append(nil))
	closeWrite(c)
}

// serveSource sends h.Length bytes of the seed's stream, half-closes and
// then drains until the client closes.
func serveSource(c net.Conn, h Header) {
	p := NewPattern(h.Seed)
	for off := int64(0); off < h.Length; {
		b := p.At(off, int(min(ChunkSize, h.Length-off)))
		n, err := c.Write(b)
		off += int64(n)
		if err != nil {
			return
		}
	}
	closeWrite(c)
	io.Copy(io.Discard, c)
}

// closeWriter is a connection whose sending side can be shut alone.
type closeWriter interface{ CloseWrite() error }

// closeWrite half-closes c, or closes it if it cannot half-close.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
