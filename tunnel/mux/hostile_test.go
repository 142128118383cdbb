package mux

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The hostile tests write raw frames to a server session over net.Pipe and
// check the safe outcome, the violation reported, and that the session's
// goroutines are gone afterwards.

// rawPeer is the far end of a session, speaking raw frames.
type rawPeer struct {
	t        *testing.T
	conn     net.Conn
	sess     *Session
	kinds    chan string
	mu       sync.Mutex
	received []header // frames the session sent us
	reading  bool
	readDone chan struct{}
}

// newRawPeer starts a server session (cfg nil means defaults) facing a raw
// peer. If reading is false, the peer does not read what the session
// writes until startReading.
func newRawPeer(t *testing.T, cfg *Config, reading bool) *rawPeer {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	p := &rawPeer{t: t, kinds: make(chan string, 10), readDone: make(chan struct{})}
	cfg.OnViolation = func(kind string) { p.kinds <- kind }
	a, b := net.Pipe()
	p.conn = b
	var err error
	if p.sess, err = Server(a, cfg); err != nil {
		t.Fatal(err)
	}
	if reading {
		p.startReading()
	}
	return p
}

func (p *rawPeer) startReading() {
	p.reading = true
	go p.readLoop()
}

// readLoop records the headers of the frames the session sends.
func (p *rawPeer) readLoop() {
	defer close(p.readDone)
	br := bufio.NewReader(p.conn)
	for {
		var h header
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		if h.typ() == typeData {
			if _, err := br.Discard(int(h.length())); err != nil {
				return
			}
		}
		p.mu.Lock()
		p.received = append(p.received, h)
		p.mu.Unlock()
	}
}

// count returns how many received frames match.
func (p *rawPeer) count(match func(h header) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, h := range p.received {
		if match(h) {
			n++
		}
	}
	return n
}

// frames encodes n copies of a frame.
func frames(n int, t frameType, flags uint16, id, length uint32, body []byte) []byte {
	var out []byte
	for range n {
		h := makeHeader(t, flags, id, length)
		out = append(append(out, h[:]...), body...)
	}
	return out
}

// send writes raw bytes; an error (the session hung up) is returned.
func (p *rawPeer) send(b []byte) error {
	_, err := p.conn.Write(b)
	return err
}

// finish closes both ends and waits for everything to stop.
func (p *rawPeer) finish() {
	p.sess.Close()
	p.conn.Close()
	if p.reading {
		<-p.readDone
	}
}

// expectViolation waits for the session to end with a ProtocolError of
// kind, reported once through OnViolation.
func (p *rawPeer) expectViolation(kind string) {
	p.t.Helper()
	select {
	case <-p.sess.Done():
	case <-time.After(10 * time.Second):
		p.t.Fatalf("session still running; want %s", kind)
	}
	var pe *ProtocolError
	if err := p.sess.Err(); !errors.As(err, &pe) || pe.Kind != kind || !errors.Is(err, ErrProtocol) {
		p.t.Fatalf("session ended with %v; want a %s violation", err, kind)
	}
	select {
	case got := <-p.kinds:
		if got != kind {
			p.t.Fatalf("OnViolation(%q); want %q", got, kind)
		}
	case <-time.After(5 * time.Second):
		p.t.Fatalf("OnViolation was not called")
	}
	select {
	case got := <-p.kinds:
		p.t.Fatalf("OnViolation called again with %q", got)
	default:
	}
}

// hostileTest wraps a test body with a goroutine-leak check.
func hostileTest(t *testing.T, cfg *Config, reading bool, body func(p *rawPeer)) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	p := newRawPeer(t, cfg, reading)
	defer p.finish()
	body(p)
}

func TestHostilePingFlood(t *testing.T) {
	hostileTest(t, nil, true, func(p *rawPeer) {
		p.send(frames(5000, typePing, flagSYN, 0, 7, nil))
		p.expectViolation(KindPingFlood)
		if !errors.Is(p.sess.Err(), ErrFlood) {
			t.Fatalf("%v does not match ErrFlood", p.sess.Err())
		}
		pongs := p.count(func(h header) bool { return h.typ() == typePing && h.flags() == flagACK })
		if pongs > DefaultConfig().PingLimit.Burst+maxPendingPongs {
			t.Fatalf("%d pongs sent for a flood; want at most the burst", pongs)
		}
	})
}

// TestHostilePingNoReader pings a session but never reads its answers: the
// pongs wait in bounded slots behind one flusher, and the write timeout ends
// the session instead of a hang.
func TestHostilePingNoReader(t *testing.T) {
	cfg := DefaultConfig()
	cfg.WriteTimeout = 300 * time.Millisecond
	hostileTest(t, cfg, false, func(p *rawPeer) {
		before := goroutines()
		for i := range 90 {
			if err := p.send(frames(1, typePing, flagSYN, 0, uint32(i), nil)); err != nil {
				t.Fatalf("ping %d: %v", i, err)
			}
		}
		// One flusher; a little slack for timers of earlier tests.
		if extra := goroutines() - before; extra > 3 {
			t.Fatalf("%d more goroutines for 90 unanswered pings; want one flusher", extra)
		}
		p.sess.w.mu.Lock()
		pending := 0
		if p.sess.w.pending != nil {
			pending = p.sess.w.pending.pongs
		}
		p.sess.w.mu.Unlock()
		if pending > maxPendingPongs {
			t.Fatalf("%d pongs pending; want at most %d", pending, maxPendingPongs)
		}
		select {
		case <-p.sess.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("session outlived its write timeout")
		}
		if err := p.sess.Err(); !errors.Is(err, ErrWriteTimeout) {
			t.Fatalf("session ended with %v; want ErrWriteTimeout", err)
		}
	})
}

func TestHostileWindowUpdateFlood(t *testing.T) {
	hostileTest(t, nil, true, func(p *rawPeer) {
		p.send(frames(1, typeWindowUpdate, flagSYN, 1, 0, nil))
		p.send(frames(10000, typeWindowUpdate, 0, 1, 0, nil))
		p.expectViolation(KindEmptyFlood)
	})
}

func TestHostileSYNFlood(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AcceptBacklog = 4
	hostileTest(t, cfg, true, func(p *rawPeer) {
		var syns []byte
		for i := range 100 {
			syns = append(syns, frames(1, typeWindowUpdate, flagSYN, uint32(2*i+1), 0, nil)...)
		}
		p.send(syns)
		eventually(t, 5*time.Second, "96 RSTs", func() bool {
			return p.count(func(h header) bool { return h.flags() == flagRST }) == 96
		})
		if n := p.sess.NumStreams(); n != 4 {
			t.Fatalf("session holds %d streams; want the backlog, 4", n)
		}
		if err := p.sess.Err(); err != nil {
			t.Fatalf("session ended within the limits: %v", err)
		}
		syns = syns[:0]
		for i := range 2000 {
			syns = append(syns, frames(1, typeWindowUpdate, flagSYN, uint32(1001+2*i), 0, nil)...)
		}
		p.send(syns)
		p.expectViolation(KindStreamFlood)
	})
}

func TestHostileResetChurn(t *testing.T) {
	hostileTest(t, nil, true, func(p *rawPeer) {
		var b []byte
		for i := range 1000 {
			b = append(b, frames(1, typeWindowUpdate, flagSYN, uint32(2*i+1), 0, nil)...)
			b = append(b, frames(1, typeWindowUpdate, flagRST, uint32(2*i+1), 0, nil)...)
		}
		p.send(b)
		p.expectViolation(KindStreamFlood)
	})
}

func TestHostileDataBeyondWindow(t *testing.T) {
	hostileTest(t, nil, true, func(p *rawPeer) {
		p.send(frames(1, typeData, flagSYN, 1, initialWindow, make([]byte, initialWindow)))
		if err := p.sess.Err(); err != nil {
			t.Fatalf("a full window ended the session: %v", err)
		}
		p.send(frames(1, typeData, 0, 1, 1, []byte{0}))
		p.expectViolation(KindWindowExceeded)
	})
}

func TestHostileUnknownStream(t *testing.T) {
	hostileTest(t, nil, true, func(p *rawPeer) {
		// Data for streams that do not exist is read and dropped.
		if err := p.send(frames(1000, typeData, 0, 99, 100, make([]byte, 100))); err != nil {
			t.Fatal(err)
		}
		p.send(frames(1, typePing, flagSYN, 0, 42, nil))
		eventually(t, 5*time.Second, "the pong", func() bool {
			return p.count(func(h header) bool { return h.typ() == typePing && h.length() == 42 }) == 1
		})
		// Bodiless frames for them count as empty.
		p.send(frames(10000, typeWindowUpdate, 0, 99, 1, nil))
		p.expectViolation(KindEmptyFlood)
	})
}

func TestHostileGoAwayFlood(t *testing.T) {
	hostileTest(t, nil, true, func(p *rawPeer) {
		p.send(frames(10000, typeGoAway, 0, 0, goAwayNormal, nil))
		p.expectViolation(KindEmptyFlood)
	})
}

// TestHostileMalformed sends one bad frame after a valid stream open.
func TestHostileMalformed(t *testing.T) {
	open := frames(1, typeWindowUpdate, flagSYN, 1, 0, nil)
	cases := []struct {
		name  string
		bytes []byte
		kind  string
	}{
		{"bad version", []byte{1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, KindBadVersion},
		{"bad type", []byte{0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, KindBadType},
		{"data on stream 0", frames(1, typeData, 0, 0, 1, []byte{1}), KindBadStreamID},
		{"SYN with our parity", frames(1, typeWindowUpdate, flagSYN, 2, 0, nil), KindBadStreamID},
		{"duplicate SYN", frames(1, typeWindowUpdate, flagSYN, 1, 0, nil), KindDuplicateStream},
		{"data after FIN", append(frames(1, typeWindowUpdate, flagFIN, 1, 0, nil), frames(1, typeData, 0, 1, 1, []byte{1})...), KindDataAfterFIN},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hostileTest(t, nil, true, func(p *rawPeer) {
				p.send(append(append([]byte{}, open...), c.bytes...))
				p.expectViolation(c.kind)
				eventually(t, 5*time.Second, "a protocol-error go away", func() bool {
					return p.count(func(h header) bool { return h.typ() == typeGoAway && h.length() == goAwayProtocol }) == 1
				})
			})
		})
	}
}

// TestHostileHangUp cuts the connection inside a header and inside a body.
func TestHostileHangUp(t *testing.T) {
	cases := map[string][]byte{
		"half header": {0, 0, 0, 1, 0},
		"half body":   frames(1, typeData, flagSYN, 1, 1000, make([]byte, 10)),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			hostileTest(t, nil, true, func(p *rawPeer) {
				p.send(b)
				p.conn.Close()
				select {
				case <-p.sess.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("session still running after hang-up")
				}
				if err := p.sess.Err(); !errors.Is(err, ErrConnLost) || !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
					t.Fatalf("session ended with %v; want ErrConnLost", err)
				}
			})
		})
	}
}

// TestHostileGoAwayCode checks that a go away with an error code ends the
// session with a GoAwayError and no violation.
func TestHostileGoAwayCode(t *testing.T) {
	hostileTest(t, nil, true, func(p *rawPeer) {
		p.send(frames(1, typeGoAway, 0, 0, goAwayInternal, nil))
		<-p.sess.Done()
		var ge *GoAwayError
		if err := p.sess.Err(); !errors.As(err, &ge) || ge.Code != goAwayInternal || !errors.Is(err, ErrRemoteGoAway) {
			t.Fatalf("session ended with %v", err)
		}
		select {
		case k := <-p.kinds:
			t.Fatalf("OnViolation(%q) for a go away", k)
		default:
		}
	})
}
