package tunnel

import (
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
)

// The connection under a yamux session is layered for throughput
// (DESIGN.md section 5, measured in benchmarks/results/):
//
//	yamux → frameWriter → *tls.Conn → batchConn → *net.TCPConn
//
// yamux writes each data frame as two Writes, its 12-byte header and then
// its body. frameWriter holds such a header back and hands both to TLS
// together, and batchConn gathers the TLS records of that pair into one
// write system call instead of one per 16 KiB record.

// yamux header layout (yamux spec.md): version, type, flags, stream ID,
// length; type 0 is a data frame.
const (
	yamuxHeaderLen = 12
	yamuxTypeData  = 0
)

// batchConn gathers writes between begin and end into one system call.
// Writes outside a batch (TLS alerts, key updates) go straight through;
// a mutex keeps them in order with a batch in progress.
type batchConn struct {
	net.Conn
	r        readAhead
	mu       sync.Mutex
	batching bool
	buf      []byte
}

func (b *batchConn) Read(p []byte) (int, error) { return b.r.Read(b.Conn, p) }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	if b.buf == nil {
		b.buf = *batchBufs.Get().(*[]byte)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// end sends what the batch gathered.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	if cap(b.buf) <= maxBatchKeep { // a rare huge batch is left to the GC
		buf := b.buf[:0]
		batchBufs.Put(&buf)
	}
	b.buf = nil // a quiet session pins no batch buffer
	return err
}

// readAhead lets TLS read many records per system call while data streams,
// without pinning a large buffer to a quiet session: a session at rest
// reads straight into TLS's own record buffer. A read that fills that
// buffer means more is waiting, so the next read goes into a pooled
// readBufSize buffer, which returns to its pool as soon as TLS has taken
// every byte of it. Reads ahead continue while each brings at least a
// quarter of a buffer. Only yamux's receive loop reads, so no lock.
type readAhead struct {
	bp   *[]byte // pooled buffer holding buf[r:w]; nil when empty
	r, w int
	err  error // the error that came with the buffered bytes
	bulk bool
}

// readBufSize is the size of a read ahead under TLS.
const readBufSize = 256 << 10

var readBufs = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

func (ra *readAhead) Read(c net.Conn, p []byte) (int, error) {
	if ra.bp != nil {
		n := copy(p, (*ra.bp)[ra.r:ra.w])
		if ra.r += n; ra.r == ra.w {
			readBufs.Put(ra.bp)
			ra.bp = nil
		}
		return n, nil
	}
	if err := ra.err; err != nil {
		ra.err = nil
		return 0, err
	}
	if !ra.bulk || len(p) >= readBufSize {
		n, err := c.Read(p)
		ra.bulk = n == len(p)
		return n, err
	}
	bp := readBufs.Get().(*[]byte)
	n, err := c.Read(*bp)
	ra.bulk = n >= readBufSize/4
	m := copy(p, (*bp)[:n])
	if m == n {
		readBufs.Put(bp)
		return m, err
	}
	ra.bp, ra.r, ra.w, ra.err = bp, m, n, err
	return m, nil
}

// maxBatchKeep bounds the batch buffers kept in their pool.
const maxBatchKeep = 256 << 10

var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// frameWriter is the connection yamux writes to. yamux calls Write from its
// single send goroutine only, so held needs no lock.
type frameWriter struct {
	*tls.Conn
	raw  *batchConn
	hdr  [yamuxHeaderLen]byte
	held bool
}

// newFrameWriter layers a TLS connection over raw for yamux; wrap is
// tls.Client or tls.Server.
func newFrameWriter(raw net.Conn, cfg *tls.Config, wrap func(net.Conn, *tls.Config) *tls.Conn) *frameWriter {
	b := &batchConn{Conn: raw}
	return &frameWriter{Conn: wrap(b, cfg), raw: b}
}

func (w *frameWriter) Write(p []byte) (int, error) {
	if !w.held && len(p) == yamuxHeaderLen && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		copy(w.hdr[:], p) // the body follows at once: send them together
		w.held = true
		return len(p), nil
	}
	w.raw.begin()
	if w.held {
		w.held = false
		if _, err := w.Conn.Write(w.hdr[:]); err != nil {
			w.raw.end()
			return 0, err
		}
	}
	n, err := w.Conn.Write(p)
	if ferr := w.raw.end(); err == nil {
		err = ferr
	}
	return n, err
}
