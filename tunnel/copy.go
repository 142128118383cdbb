package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
)

// The copy path (DESIGN.md section 5) lives in this file and nowhere else:
// every tunneled byte on the server and on the agent passes through pipe.
//
// Each direction reads into a small buffer while its tunnel is quiet and
// into a large one while data streams, so that an idle tunnel pins a few
// KiB rather than the large buffers bulk transfers want. A read that fills
// the small buffer means more is waiting: the next read uses a large
// buffer. A read that returns less than a small buffer's worth means the
// stream has gone quiet: the large buffer goes back to its pool, and a
// yamux stream also drops its receive buffer (Shrink).

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
// data is waiting (*yamux.Stream).
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
// (on EOF) or closes both (on error).
func copyHalf(dst, src net.Conn, count counter) int64 {
	n, err := copyAdaptive(dst, src, count)
	if err != nil {
		src.Close()
		dst.Close()
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
// switching between a small and a large pooled buffer as described at the
// top of this file. Unlike io.Copy it never takes a ReaderFrom/WriterTo
// detour, which would allocate a buffer of its own for the stream types
// used here.
func copyAdaptive(dst io.Writer, src io.Reader, count counter) (int64, error) {
	shrink, _ := src.(shrinker)
	bp := smallBufs.Get().(*[]byte)
	large := false
	defer func() { release(bp, large) }()
	var n int64
	for {
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
			if errors.Is(rerr, io.EOF) {
				return n, nil
			}
			return n, rerr
		}
		if !large && nr == len(buf) {
			smallBufs.Put(bp)
			bp, large = largeBufs.Get().(*[]byte), true
		} else if nr < smallBufSize {
			if large {
				largeBufs.Put(bp)
				bp, large = smallBufs.Get().(*[]byte), false
			}
			if shrink != nil {
				shrink.Shrink()
			}
		}
	}
}

func release(bp *[]byte, large bool) {
	if large {
		largeBufs.Put(bp)
	} else {
		smallBufs.Put(bp)
	}
}
