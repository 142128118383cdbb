package tunnel

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/tunnel-project/tunnel/tunnel/mux"
)

// The copy path (DESIGN.md section 5) lives in this file and nowhere else:
// every tunneled byte on the server and on the agent passes through pipe.
//
// An idle tunnel must not pin buffers: with 10,000 tunnels open, 64 KiB per
// direction would be over a GiB. So each direction first waits, holding no
// buffer, until its source has data (waitReadable), then reads into a small
// pooled buffer and returns it at once. A read that fills the small buffer
// means more is waiting: the direction switches to a large buffer, which it
// keeps while data streams. A read that returns less than a small buffer's
// worth means the stream has gone quiet: the large buffer goes back to its
// pool, and a session stream also drops its receive buffer (Shrink).

// Buffer sizes, measured in benchmarks/results/.
const (
	smallBufSize = 2 << 10
	largeBufSize = 64 << 10
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
)

// closeWriter is a connection whose sending side can be shut alone
// (*net.TCPConn, *net.UnixConn, *tls.Conn, and our stream wrapper).
type closeWriter interface {
	CloseWrite() error
}

// shrinker is a connection that can release its receive buffer while no
// data is waiting (*mux.Stream).
type shrinker interface {
	Shrink()
}

// counter receives the number of bytes each write moved; a
// prometheus.Counter is one. Nil counts nothing.
type counter interface {
	Add(float64)
}

// pipe copies a→b and b→a until both directions have ended, then closes
// both. A direction that reaches EOF half-closes its destination, so the
// other direction keeps flowing to its own end; a direction that fails
// closes both connections, which ends the other direction too. The counters
// see the bytes of each direction as they move.
func pipe(a, b net.Conn, aToBCount, bToACount counter) (aToB, bToA int64) {
	done := make(chan int64, 1)
	go func() { done <- copyHalf(b, a, aToBCount) }()
	bToA = copyHalf(a, b, bToACount)
	aToB = <-done
	a.Close()
	b.Close()
	return aToB, bToA
}

// copyHalf copies src to dst until EOF or an error, then half-closes dst
// (on EOF) or aborts both (on error).
func copyHalf(dst, src net.Conn, count counter) int64 {
	var sunk atomic.Int64
	if st := sessionStream(src); st != nil {
		if sink := socketSink(dst, count, &sunk); sink != nil {
			st.SetSink(sink)
			defer st.SetSink(nil)
		}
	}
	n, err := copyAdaptive(dst, src, count)
	n += sunk.Load()
	if err != nil {
		abort(src)
		abort(dst)
		return n
	}
	if cw, ok := dst.(closeWriter); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
	return n
}

// copyAdaptive copies src to dst until EOF (returning nil) or an error,
// with buffers taken as described at the top of this file. Unlike io.Copy it
// never takes a ReaderFrom/WriterTo detour, which would allocate a buffer of
// its own for the stream types used here.
func copyAdaptive(dst io.Writer, src io.Reader, count counter) (n int64, err error) {
	wait := readWaiter(src)
	shrink, _ := src.(shrinker)
	var bp *[]byte // the buffer in hand; nil while waiting
	large := false
	defer func() {
		if bp != nil {
			release(bp, large)
		}
	}()
	for {
		if bp == nil {
			if wait != nil {
				if err := wait(); err != nil {
					return n, eofIsNil(err)
				}
			}
			bp = smallBufs.Get().(*[]byte)
		}
		buf := *bp
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if count != nil {
				count.Add(float64(nw))
			}
			if werr != nil {
				return n, werr
			}
		}
		if rerr != nil {
			return n, eofIsNil(rerr)
		}
		switch {
		case !large && nr == len(buf): // more is waiting
			smallBufs.Put(bp)
			bp, large = largeBufs.Get().(*[]byte), true
		case nr < smallBufSize: // quiet
			if large || wait != nil {
				release(bp, large)
				bp, large = nil, false
			}
			if shrink != nil {
				shrink.Shrink()
			}
		}
	}
}

// The fast lane. While copyAdaptive waits for a session stream to have data
// (a zero-length Read), the session's read loop may write the stream's
// data straight to the destination socket itself (mux.Stream.SetSink): one
// non-blocking write, no wake-up of this goroutine, and so two fewer
// thread hand-offs per round trip than read, wake, write. What the socket
// does not take at once is buffered in the stream as usual, and this
// goroutine wakes and writes it with blocking writes. Only plain sockets
// (TCP on the node, the unix-socket frontend) take the fast lane; a TLS
// destination needs its own goroutine to encrypt.

// sessionStream returns the session stream c reads from, or nil.
func sessionStream(c net.Conn) *mux.Stream {
	switch c := c.(type) {
	case *mux.Stream:
		return c
	case *streamConn:
		return sessionStream(c.Conn)
	}
	return nil
}

// socketSink returns a sink for a session stream that writes to dst's
// socket without blocking, counting what it writes in count and sunk; or
// nil if dst is not a plain socket.
func socketSink(dst net.Conn, count counter, sunk *atomic.Int64) func([]byte) int {
	sc, ok := dst.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return func(p []byte) int {
		n := 0
		rc.Write(func(fd uintptr) bool {
			for n < len(p) {
				k, err := syscall.Write(int(fd), p[n:])
				if err == syscall.EINTR {
					continue
				}
				if k <= 0 || err != nil {
					break // EAGAIN, or an error the blocking write will see
				}
				n += k
			}
			return true // never wait: the copier does that
		})
		if n > 0 {
			sunk.Add(int64(n))
			if count != nil {
				count.Add(float64(n))
			}
		}
		return n
	}
}

// resetter is a connection that can end both ways at once, telling the
// peer it was aborted rather than finished (*mux.Stream: RST, not FIN).
type resetter interface {
	Reset() error
}

// abort ends c after a failure: reset if it can be, else closed.
func abort(c net.Conn) {
	if r, ok := c.(resetter); ok {
		r.Reset()
	}
	c.Close()
}

// eofIsNil returns nil for a clean end of input: io.EOF itself, as Read
// returns it. A wrapped io.EOF is a failure that happened to read EOF (a
// session whose connection ended under the stream) and stays an error, so
// the other direction is aborted instead of left half-open.
func eofIsNil(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}

func release(bp *[]byte, large bool) {
	if large {
		largeBufs.Put(bp)
	} else {
		smallBufs.Put(bp)
	}
}

// readWaiter returns a function that blocks until src has data to read,
// or has reached EOF or failed, without holding a buffer; or nil if src
// cannot wait that way.
func readWaiter(src io.Reader) func() error {
	switch c := src.(type) {
	case *mux.Stream:
		// A zero-length Read blocks until data is buffered or the stream
		// ends, and consumes nothing (TestReadWaiters pins this down).
		return func() error { _, err := c.Read(nil); return err }
	case *streamConn:
		return readWaiter(c.Conn)
	case syscall.Conn: // *net.TCPConn, *net.UnixConn
		rc, err := c.SyscallConn()
		if err != nil {
			return nil
		}
		return func() error { return rc.Read(peekReadable) }
	}
	return nil
}

// peekReadable is a syscall.RawConn Read callback that reports whether the
// socket has data, EOF or an error pending, consuming nothing: false makes
// the runtime wait for the socket to become readable and call it again.
func peekReadable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}
