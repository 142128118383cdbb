package mux

import (
	"bytes"
	"testing"
)

// TestRecvBuffer fills a buffer through reserve and commit in frames of
// awkward sizes and reads it back in other sizes.
func TestRecvBuffer(t *testing.T) {
	var b recvBuffer
	var want, got []byte
	sizes := []int{1, 100, chunkSize - 1, chunkSize, 3*chunkSize + 7, 5}
	seed := uint64(0)
	for _, n := range sizes {
		data := randBytes(n, seed)
		seed++
		regions := b.reserve(n, nil)
		off := 0
		for _, r := range regions {
			off += copy(r, data[off:])
		}
		if off != n {
			t.Fatalf("reserve(%d) gave %d bytes of space", n, off)
		}
		b.commit(regions)
		want = append(want, data...)
		p := make([]byte, 777)
		k := b.read(p)
		got = append(got, p[:k]...)
	}
	p := make([]byte, chunkSize/3)
	for b.n > 0 {
		k := b.read(p)
		got = append(got, p[:k]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read back %d bytes that differ from the %d written", len(got), len(want))
	}
	if len(b.chunks) != 0 {
		t.Fatalf("drained buffer holds %d chunks", len(b.chunks))
	}
}

// TestRecvBufferReleaseWhileFilling checks that a release during a fill
// drops the fill at commit and leaves nothing held.
func TestRecvBufferReleaseWhileFilling(t *testing.T) {
	var b recvBuffer
	regions := b.reserve(2*chunkSize, nil)
	b.release()
	if len(b.chunks) == 0 {
		t.Fatal("release during a fill freed the chunks being filled")
	}
	b.commit(regions)
	if b.n != 0 || len(b.chunks) != 0 || b.held() != 0 {
		t.Fatalf("after commit: n %d, chunks %d, held %d", b.n, len(b.chunks), b.held())
	}
}
