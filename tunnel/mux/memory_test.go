package mux

import (
	"io"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestStalledMemory stalls 100 streams, each with its receive window grown
// to 1 MiB and then filled, and checks that the heap grew by at most 1.1
// times the bytes buffered; then drains them and checks that the memory is
// given back.
func TestStalledMemory(t *testing.T) {
	nStreams := 100
	if testing.Short() {
		nStreams = 20
	}
	const window = 1 << 20
	cfg := DefaultConfig()
	cfg.MaxStreamWindow = window
	cfg.SessionReceiveBudget = int64(nStreams) * window
	c, s := sessions(t, transports[1], nil, cfg) // TCP
	src := make([]byte, 4*window)
	var send, recv []*Stream
	for range nStreams {
		a, b := openAccept(t, c, s)
		send, recv = append(send, a), append(recv, b)
	}
	readBuf := make([]byte, window)
	base := heapInUse()

	var wg sync.WaitGroup
	for _, a := range send {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Blocks once the window is full, until its deadline. Writes
			// again if the reader took all of src before its window was
			// full (a fast reader can), so the window always fills.
			for {
				if _, err := a.Write(src); err != nil {
					return
				}
			}
		}()
	}
	// Read each stream until its window has grown to the maximum and the
	// read that granted the last credit has topped it up to the full window.
	for _, b := range recv {
		for !fullyCredited(b, window) {
			if _, err := b.Read(readBuf[:16<<10]); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, 60*time.Second, "every window to fill", func() bool {
		for _, b := range recv {
			b.mu.Lock()
			full := b.window == window && b.credit == 0
			b.mu.Unlock()
			if !full {
				return false
			}
		}
		return true
	})
	stalled := heapInUse()
	n := 0
	for _, b := range recv {
		b.mu.Lock()
		n += b.buf.n
		b.mu.Unlock()
	}
	t.Logf("%d streams: %d bytes buffered (%.2f MiB per stream); heap grew %d (%.3f× the buffered bytes)",
		nStreams, n, float64(n)/float64(nStreams)/(1<<20), stalled-base, float64(stalled-base)/float64(n))
	if n != nStreams*window {
		t.Fatalf("%d bytes buffered; want %d", n, nStreams*window)
	}
	if grown := stalled - base; float64(grown) > 1.1*float64(n) {
		t.Fatalf("stalled streams grew the heap by %d bytes for %d buffered (%.2f×)", grown, n, float64(grown)/float64(n))
	}

	// Stop the senders, drain the receivers: nothing may stay held.
	for _, a := range send {
		a.SetWriteDeadline(time.Now())
	}
	wg.Wait()
	for _, a := range send {
		a.CloseWrite()
	}
	for _, b := range recv {
		if _, err := io.CopyBuffer(io.Discard, b, readBuf); err != nil {
			t.Fatal(err)
		}
		b.mu.Lock()
		held := len(b.buf.chunks)
		b.mu.Unlock()
		if held != 0 {
			t.Fatalf("a drained stream still holds %d chunks", held)
		}
	}
	drained := heapInUse()
	t.Logf("heap after draining: %+d bytes from the start", drained-base)
	if drained-base > n/20 {
		t.Fatalf("heap still %d bytes above the start after draining", drained-base)
	}
}

// fullyCredited reports whether b's window is max and its credit plus what
// it buffers makes the whole window.
func fullyCredited(b *Stream, max uint32) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.window == max && b.credit+uint32(b.buf.n) == max
}

// heapInUse returns the live heap after full collections, which also empty
// the chunk pool, so freed chunks do not count.
func heapInUse() int {
	runtime.GC()
	runtime.GC() // the pool's victim cache survives one collection
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int(m.HeapAlloc)
}

// TestIdleSessionMemory: a session that has carried small frames and gone
// idle holds no read buffer (read.go): 100 idle session pairs, each with an
// open stream, cost the heap well under one 16 KiB buffer per session.
func TestIdleSessionMemory(t *testing.T) {
	const pairs = 100
	base := heapInUse()
	msg := make([]byte, 4<<10) // bodies shorter than the buffer go through it
	var streams []*Stream
	for range pairs {
		c, s := sessions(t, transports[0], nil, nil) // net.Pipe: no kernel or TLS buffers
		a, b := openAccept(t, c, s)
		for range 3 { // both ways
			for _, p := range [][2]*Stream{{a, b}, {b, a}} {
				go p[0].Write(msg)
				if _, err := io.ReadFull(p[1], msg); err != nil {
					t.Fatal(err)
				}
			}
		}
		streams = append(streams, a, b)
	}
	perSession := (heapInUse() - base) / (2 * pairs)
	t.Logf("heap per idle session with one stream: %d bytes", perSession)
	if perSession > readBufferSize*3/4 {
		t.Fatalf("an idle session holds %d bytes of heap: its read buffer is not given back", perSession)
	}
	runtime.KeepAlive(streams)
}
