package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
)

// The copy path (DESIGN.md section 5) lives in this file and nowhere else:
// every tunneled byte on the server and on the agent passes through pipe.

// copyBufSize is the size of the pooled buffers that carry tunneled bytes.
const copyBufSize = 64 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// closeWriter is a connection whose sending side can be shut alone
// (*net.TCPConn, *net.UnixConn, *tls.Conn, and our stream wrapper).
type closeWriter interface {
	CloseWrite() error
}

// pipe copies a→b and b→a until both directions have ended, then closes
// both. A direction that reaches EOF half-closes its destination, so the
// other direction keeps flowing to its own end; a direction that fails
// closes both connections, which ends the other direction too.
func pipe(a, b net.Conn) (aToB, bToA int64) {
	done := make(chan int64, 1)
	go func() { done <- copyHalf(b, a) }()
	bToA = copyHalf(a, b)
	aToB = <-done
	a.Close()
	b.Close()
	return aToB, bToA
}

// copyHalf copies src to dst until EOF or an error, then half-closes dst
// (on EOF) or closes both (on error).
func copyHalf(dst, src net.Conn) int64 {
	bp := copyBufs.Get().(*[]byte)
	n, err := copyBuffer(dst, src, *bp)
	copyBufs.Put(bp)
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

// copyBuffer is io.CopyBuffer without the ReaderFrom/WriterTo detours,
// which would allocate a buffer of their own for the stream types used
// here. It returns nil at EOF.
func copyBuffer(dst io.Writer, src io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
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
	}
}
