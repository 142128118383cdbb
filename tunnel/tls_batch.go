package tunnel

import (
	"crypto/tls"
	"net"
	"sync"
)

// The connection under a session is layered for throughput (DESIGN.md
// section 5, measured in benchmarks/results/):
//
//	mux.Session → batchedTLS → *tls.Conn → batchConn → *net.TCPConn
//
// The session writes whole frames, all that are waiting, in one Write;
// batchedTLS makes batchConn gather the TLS records of that Write into
// write system calls of batchLimit, instead of one per 16 KiB record.

// batchLimit is what batchConn gathers before it writes: four full TLS
// records, one large copy-path read (tunnel/copy.go). A session's Write
// can hold four such frames from as many streams; gathered whole into one
// system call, the peer waited for all of them to be sealed before it could
// decrypt the first. Writing every 64 KiB keeps both ends busy: 8-stream
// throughput went from 0.6 to 0.85 times the probe's, with less CPU per GB
// (benchmarks/results/README.md, "Levers").
const batchLimit = 64 << 10

// batchConn gathers writes between begin and end into system calls of
// batchLimit. Writes outside a batch (TLS alerts, key updates) go straight
// through; a mutex keeps them in order with a batch in progress.
type batchConn struct {
	net.Conn
	r        readAhead
	mu       sync.Mutex
	batching bool
	buf      *[]byte // from batchBufs while a batch holds bytes
}

func (b *batchConn) Read(p []byte) (int, error) { return b.r.Read(b.Conn, p) }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	if b.buf == nil {
		b.buf = batchBufs.Get().(*[]byte)
	}
	*b.buf = append(*b.buf, p...)
	if len(*b.buf) < batchLimit {
		return len(p), nil
	}
	_, err := b.Conn.Write(*b.buf)
	*b.buf = (*b.buf)[:0]
	return len(p), err
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
	if b.buf == nil {
		return nil
	}
	var err error
	if len(*b.buf) > 0 {
		_, err = b.Conn.Write(*b.buf)
	}
	if cap(*b.buf) <= maxBatchKeep { // a rare huge batch is left to the GC
		*b.buf = (*b.buf)[:0]
		batchBufs.Put(b.buf)
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
// quarter of a buffer. Only the session's read loop reads, so no lock.
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

// batchedTLS is the connection a session writes to: a TLS connection each
// of whose Writes leaves in one write system call. Its NetConn is the
// batchConn, so a session that closes it first closes the TCP connection.
type batchedTLS struct {
	*tls.Conn
	raw *batchConn
}

// newBatchedTLS layers a TLS connection over raw; wrap is tls.Client or
// tls.Server.
func newBatchedTLS(raw net.Conn, cfg *tls.Config, wrap func(net.Conn, *tls.Config) *tls.Conn) *batchedTLS {
	b := &batchConn{Conn: raw}
	return &batchedTLS{Conn: wrap(b, cfg), raw: b}
}

func (c *batchedTLS) Write(p []byte) (int, error) {
	c.raw.begin()
	n, err := c.Conn.Write(p)
	if ferr := c.raw.end(); err == nil {
		err = ferr
	}
	return n, err
}
