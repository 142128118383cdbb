package mux

import "sync"

// chunkSize is the unit of receive memory. A stream's buffer is a list of
// chunks, so a stalled stream holds what it buffered plus at most two
// partly used chunks (the first, partly read, and the last, partly filled):
// within 4% of a 1 MiB window. A drained buffer holds nothing.
const chunkSize = 16 << 10

var chunkPool = sync.Pool{New: func() any { return new([chunkSize]byte) }}

// chunk is one piece of a receive buffer: bytes [r, w) are buffered.
type chunk struct {
	b    *[chunkSize]byte
	r, w int
}

// recvBuffer is a stream's receive buffer. The read loop fills it in two
// steps, reserve (under the stream's lock) then commit (under the lock again),
// and reads the frame body from the connection in between without the lock,
// straight into the reserved chunk space. Readers never see reserved bytes
// before commit, and while a fill is in progress the chunk list is neither
// compacted nor released, so the reserved space stays put.
type recvBuffer struct {
	chunks  []chunk
	head    int  // first chunk with unread bytes
	n       int  // committed, unread bytes
	filling bool // a reserve is waiting for its commit
	pending int  // bytes reserved and not yet committed
	fillAt  int  // index of the first chunk the reserve covers
	dropped bool // released while filling: drop the fill at commit
}

// reserve makes room for n more bytes and appends the spaces to fill, in
// order, to regions.
func (b *recvBuffer) reserve(n int, regions [][]byte) [][]byte {
	b.filling, b.fillAt, b.pending = true, len(b.chunks), n
	if last := len(b.chunks) - 1; last >= 0 && b.chunks[last].w < chunkSize {
		c := &b.chunks[last]
		take := min(n, chunkSize-c.w)
		regions = append(regions, c.b[c.w:c.w+take])
		n -= take
		b.fillAt = last
	}
	for n > 0 {
		c := chunk{b: chunkPool.Get().(*[chunkSize]byte)}
		take := min(n, chunkSize)
		b.chunks = append(b.chunks, c)
		regions = append(regions, c.b[:take])
		n -= take
	}
	return regions
}

// commit publishes the regions of the last reserve, all of them filled.
func (b *recvBuffer) commit(regions [][]byte) {
	b.filling, b.pending = false, 0
	if b.dropped {
		b.dropped = false
		b.release()
		return
	}
	for i, r := range regions {
		b.chunks[b.fillAt+i].w += len(r)
		b.n += len(r)
	}
}

// held returns the bytes committed or reserved: what the window must count
// as buffered.
func (b *recvBuffer) held() uint32 { return uint32(b.n + b.pending) }

// read copies buffered bytes into p, returning chunks it empties to the pool.
func (b *recvBuffer) read(p []byte) int { return b.take(p, len(p)) }

// discard drops the first n buffered bytes (n at most b.n), as a read that
// copies nothing.
func (b *recvBuffer) discard(n int) { b.take(nil, n) }

// take consumes up to want buffered bytes, copying them into p unless p is
// nil, and returns chunks it empties to the pool.
func (b *recvBuffer) take(p []byte, want int) int {
	done := 0
	for done < want && b.n > 0 {
		c := &b.chunks[b.head]
		k := min(want-done, c.w-c.r)
		if p != nil {
			copy(p[done:], c.b[c.r:c.r+k])
		}
		c.r += k
		done += k
		b.n -= k
		if c.r < chunkSize {
			break // want is met, or this is the last chunk
		}
		chunkPool.Put(c.b)
		*c = chunk{}
		b.head++
	}
	b.tidy()
	return done
}

// tidy frees everything once the buffer is drained, and otherwise drops the
// slots of chunks already read once they are half the list.
func (b *recvBuffer) tidy() {
	switch {
	case b.filling:
	case b.n == 0:
		b.release()
	case b.head > 16 && b.head*2 > len(b.chunks):
		k := copy(b.chunks, b.chunks[b.head:])
		clear(b.chunks[k:])
		b.chunks, b.head = b.chunks[:k], 0
	}
}

// release discards every buffered byte and returns the memory. During a
// fill it only marks the buffer, and commit releases.
func (b *recvBuffer) release() {
	b.n = 0
	if b.filling {
		b.dropped = true
		return
	}
	for i := b.head; i < len(b.chunks); i++ {
		chunkPool.Put(b.chunks[i].b)
	}
	clear(b.chunks)
	b.chunks, b.head = b.chunks[:0], 0
	if cap(b.chunks) > 256 {
		b.chunks = nil
	}
}
