package mux

import (
	"bytes"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// recordingSink takes up to limit bytes per call (all if limit is 0) and
// keeps them, counting calls.
type recordingSink struct {
	mu    sync.Mutex
	got   bytes.Buffer
	calls int
	limit int
}

func (r *recordingSink) take(p []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.limit > 0 && len(p) > r.limit {
		p = p[:r.limit]
	}
	r.got.Write(p)
	return len(p)
}

func (r *recordingSink) snapshot() (int, []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, bytes.Clone(r.got.Bytes())
}

// waitParked waits until st's reader waits in Read(nil).
func waitParked(t *testing.T, st *Stream) {
	t.Helper()
	eventually(t, 5*time.Second, "the reader to wait", func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.parked
	})
}

// TestSinkTakesDataWhileReaderWaits: while the reader waits in Read(nil),
// data goes to the sink on the read loop and the reader stays asleep; more
// than a window's worth passes, so the sink's bytes are given back as
// window; a write deadline would catch a window that never comes back.
func TestSinkTakesDataWhileReaderWaits(t *testing.T) {
	c, s := sessions(t, transports[1], nil, nil)
	a, b := openAccept(t, c, s)
	sink := &recordingSink{}
	b.SetSink(sink.take)
	woke := make(chan error, 1)
	go func() { _, err := b.Read(nil); woke <- err }()
	waitParked(t, b)

	data := make([]byte, 3*initialWindow)
	rand.NewChaCha8([32]byte{1}).Read(data)
	a.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := a.Write(data); err != nil {
		t.Fatalf("writing %d bytes through a sink: %v", len(data), err)
	}
	eventually(t, 10*time.Second, "the sink to take every byte", func() bool {
		_, got := sink.snapshot()
		return len(got) == len(data)
	})
	if _, got := sink.snapshot(); !bytes.Equal(got, data) {
		t.Fatal("the sink's bytes differ from those written")
	}
	select {
	case err := <-woke:
		t.Fatalf("the reader woke (%v) though the sink took everything", err)
	case <-time.After(50 * time.Millisecond):
	}
	a.CloseWrite()
	if err := <-woke; err != io.EOF {
		t.Fatalf("after FIN the waiting reader got %v, want EOF", err)
	}
}

// TestSinkRemainderIsRead: what the sink does not take is buffered, in
// order, the reader wakes for it, and while it holds unread data nothing
// more goes to the sink.
func TestSinkRemainderIsRead(t *testing.T) {
	c, s := sessions(t, transports[1], nil, nil)
	a, b := openAccept(t, c, s)
	sink := &recordingSink{limit: 3}
	b.SetSink(sink.take)
	woke := make(chan error, 1)
	go func() { _, err := b.Read(nil); woke <- err }()
	waitParked(t, b)
	if _, err := a.Write([]byte("abcdefgh")); err != nil {
		t.Fatal(err)
	}
	if err := <-woke; err != nil {
		t.Fatalf("Read(nil) after a partial sink: %v", err)
	}
	if _, err := a.Write([]byte("ijk")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "defghijk" {
		t.Fatalf("read %q, %v; want the rest, defghijk", got, err)
	}
	if calls, took := sink.snapshot(); calls != 1 || string(took) != "abc" {
		t.Fatalf("sink called %d times with %q; want once, abc", calls, took)
	}
}

// TestSinkOnlyWhileWaiting: a reader blocked in a Read with a buffer gets
// the data itself; the sink is not used, since that reader may be about
// to write to the sink's destination.
func TestSinkOnlyWhileWaiting(t *testing.T) {
	c, s := sessions(t, transports[1], nil, nil)
	a, b := openAccept(t, c, s)
	sink := &recordingSink{}
	b.SetSink(sink.take)
	if _, err := a.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	if calls, _ := sink.snapshot(); calls != 0 {
		t.Fatalf("sink called %d times with no reader waiting in Read(nil)", calls)
	}
}

// TestParkWakesOnce: a parked stream's sink takes what arrives with no
// goroutine waiting; what it does not take, and later the session's end,
// each call the wake-up exactly once; Park refuses while data is buffered
// or after the end.
func TestParkWakesOnce(t *testing.T) {
	c, s := sessions(t, transports[1], nil, nil)
	a, b := openAccept(t, c, s)
	sink := &recordingSink{limit: 4}
	b.SetSink(sink.take)
	wakes := make(chan struct{}, 4)
	wake := func() { wakes <- struct{}{} }
	if !b.Park(wake) {
		t.Fatal("Park refused on an empty, open stream")
	}
	a.Write([]byte("abcd"))
	eventually(t, 5*time.Second, "the sink to take abcd", func() bool { _, got := sink.snapshot(); return string(got) == "abcd" })
	if len(wakes) != 0 {
		t.Fatal("woken though the sink took everything")
	}
	a.Write([]byte("efghij"))
	select {
	case <-wakes:
	case <-time.After(5 * time.Second):
		t.Fatal("not woken for the bytes the sink left")
	}
	if b.Park(wake) {
		t.Fatal("Park accepted with ij buffered")
	}
	got := make([]byte, 2)
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "ij" {
		t.Fatalf("read %q, %v; want ij", got, err)
	}
	if !b.Park(wake) {
		t.Fatal("Park refused once the buffer was read")
	}
	s.Close()
	select {
	case <-wakes:
	case <-time.After(5 * time.Second):
		t.Fatal("the session's end did not wake the parked stream")
	}
	if b.Park(wake) || len(wakes) != 0 {
		t.Fatalf("after the end: Park accepted, or extra wake-ups (%d)", len(wakes))
	}
}
