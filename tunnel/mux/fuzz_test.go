package mux

import (
	"io"
	"net"
	"testing"
	"time"
)

// FuzzReadFrame feeds arbitrary bytes to a server session's read loop, then
// hangs up. Whatever the bytes, the session must not panic, must end
// promptly, and must hold no more than its limits allow.
func FuzzReadFrame(f *testing.F) {
	seed := func(parts ...[]byte) {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		f.Add(b)
	}
	seed(frames(1, typeData, flagSYN, 1, 5, []byte("hello")))
	seed(frames(1, typeWindowUpdate, flagSYN, 1, 1<<20, nil), frames(1, typeData, flagFIN, 1, 3, []byte("bye")))
	seed(frames(3, typePing, flagSYN, 0, 9, nil), frames(1, typePing, flagACK, 0, 1, nil))
	seed(frames(1, typeGoAway, 0, 0, goAwayNormal, nil), frames(1, typeData, flagSYN|flagRST, 3, 1, []byte{0}))
	seed(frames(1, typeData, flagSYN, 1, initialWindow+1, nil))
	seed([]byte{0, 0, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		cfg := DefaultConfig()
		cfg.AcceptBacklog = 8
		cfg.WriteTimeout = time.Second
		s, err := Server(a, cfg)
		if err != nil {
			t.Fatal(err)
		}
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, b)
			close(drained)
		}()
		b.Write(data) // fails early if the session hangs up first
		b.Close()
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("session still running after the peer hung up")
		}
		if n := s.NumStreams(); n != 0 {
			t.Fatalf("%d streams left in the table of an ended session", n)
		}
		if len(s.acceptCh) > cfg.AcceptBacklog {
			t.Fatalf("backlog holds %d streams", len(s.acceptCh))
		}
		for len(s.acceptCh) > 0 {
			st := <-s.acceptCh
			st.mu.Lock()
			if int(st.credit)+int(st.buf.held()) > int(st.window) {
				t.Errorf("stream %d holds %d bytes plus %d credit in a %d window", st.id, st.buf.held(), st.credit, st.window)
			}
			st.mu.Unlock()
		}
		s.Close()
		<-drained
	})
}
