package mux

import (
	"io"
	"sync"
	"testing"
	"time"
)

// TestWindowBudget moves data on several streams with a small session budget
// and checks the memory guarantee the whole time: windows never exceed
// MaxStreamWindow, the growth beyond 256 KiB stays within the budget, and
// every stream's credit plus buffered bytes stays within its window. When
// the streams close, the budget is whole again.
func TestWindowBudget(t *testing.T) {
	for _, budget := range []int64{0, 1 << 20} {
		cfg := DefaultConfig()
		cfg.SessionReceiveBudget = budget
		c, s := sessions(t, transports[1], nil, cfg)
		const nStreams = 4
		size := 4 << 20
		if raceEnabled {
			size = 2 << 20
		}
		data := make([]byte, size)
		var recv []*Stream
		var wg sync.WaitGroup
		for range nStreams {
			a, b := openAccept(t, c, s)
			recv = append(recv, b)
			wg.Add(2)
			go func() {
				defer wg.Done()
				a.Write(data)
				a.CloseWrite()
			}()
			go func() {
				defer wg.Done()
				io.Copy(io.Discard, b)
				b.CloseWrite()
			}()
		}
		stop := make(chan struct{})
		checked := make(chan int)
		go func() {
			n := 0
			for !closed(stop) {
				checkWindows(t, s, recv, budget)
				n++
				time.Sleep(time.Millisecond)
			}
			checked <- n
		}()
		wg.Wait()
		close(stop)
		t.Logf("budget %d: %d checks while moving %d bytes", budget, <-checked, nStreams*size)
		eventually(t, 5*time.Second, "streams to leave", func() bool { return s.NumStreams() == 0 })
		if u := s.budget.used.Load(); u != 0 {
			t.Fatalf("budget %d: %d bytes still taken after every stream left", budget, u)
		}
	}
}

// checkWindows checks the windows against the budget in one snapshot: a
// window grows (budget taken) and a stream leaves (budget given back) only
// under its stream's lock, so holding every stream's lock at once sees a
// consistent sum; one stream at a time could count a stream's window after
// another had reused the budget it gave back.
func checkWindows(t *testing.T, s *Session, streams []*Stream, budget int64) {
	for _, st := range streams {
		st.mu.Lock()
	}
	defer func() {
		for _, st := range streams {
			st.mu.Unlock()
		}
	}()
	var extra int64
	for _, st := range streams {
		w, c, held, gone := st.window, st.credit, st.buf.held(), st.gone
		if w > s.cfg.MaxStreamWindow || c+held > w {
			t.Errorf("stream %d: window %d, credit %d, held %d", st.id, w, c, held)
		}
		if !gone {
			extra += int64(w - initialWindow)
		}
	}
	if extra > budget || s.budget.used.Load() > budget {
		t.Errorf("windows grew %d (budget counter %d) beyond a budget of %d", extra, s.budget.used.Load(), budget)
	}
}

// TestWindowGrows checks that a busy stream's window doubles up to
// MaxStreamWindow when the budget allows.
func TestWindowGrows(t *testing.T) {
	c, s := sessions(t, transports[1], nil, nil)
	a, b := openAccept(t, c, s)
	go a.Write(make([]byte, 4<<20))
	if _, err := io.ReadFull(b, make([]byte, 3<<20)); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	w := b.window
	b.mu.Unlock()
	if w != DefaultConfig().MaxStreamWindow {
		t.Fatalf("window %d after 3 MiB; want %d", w, DefaultConfig().MaxStreamWindow)
	}
}

// TestCreditCountsBodyInFlight checks that a window update computed while
// the read loop is reading a body into the buffer counts that body, so the
// credit granted never exceeds the window.
func TestCreditCountsBodyInFlight(t *testing.T) {
	c, s := sessions(t, transports[0], nil, nil)
	_, b := openAccept(t, c, s)
	b.mu.Lock()
	defer b.mu.Unlock()
	// The peer sent half the window and the reader consumed it...
	b.credit -= initialWindow / 2
	// ...and a second body of 64 KiB is being read in right now.
	b.credit -= 64 << 10
	regions := b.buf.reserve(64<<10, nil)
	if d := b.creditLocked(); int(b.credit)+b.buf.n+64<<10 > int(b.window) {
		t.Fatalf("update of %d made credit %d + 64 KiB in flight exceed the window %d", d, b.credit, b.window)
	}
	b.buf.commit(regions)
	b.buf.release()
}
