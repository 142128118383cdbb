package mux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	hashicorp "github.com/hashicorp/yamux"
	libp2p "github.com/libp2p/go-yamux/v5"
)

// The interop tests run our session against hashicorp/yamux v0.1.2 and
// libp2p/go-yamux v5 over TCP loopback, with us as client and as server.

// peer is the other implementation's session, seen through what the tests
// need.
type peer interface {
	open(ctx context.Context) (net.Conn, error)
	accept() (net.Conn, error)
	ping() (time.Duration, error)
	numStreams() int
	close() error
}

// impl starts the other implementation on a connection.
type impl struct {
	name  string
	start func(conn net.Conn, client bool, backlog int) (peer, error)
	// closeWrite half-closes a stream of this implementation.
	closeWrite func(net.Conn) error
	// reset aborts a stream, or is nil if the implementation cannot.
	reset func(net.Conn) error
	// isReset reports whether a Read error means the stream was reset.
	isReset func(error) bool
}

var impls = []impl{
	{
		name:       "hashicorp",
		start:      startHashicorp,
		closeWrite: func(c net.Conn) error { return c.Close() }, // yamux's Close is a half-close
		isReset:    func(err error) bool { return errors.Is(err, hashicorp.ErrConnectionReset) },
	},
	{
		name:       "libp2p",
		start:      startLibp2p,
		closeWrite: func(c net.Conn) error { return c.(*libp2p.Stream).CloseWrite() },
		reset:      func(c net.Conn) error { return c.(*libp2p.Stream).Reset() },
		isReset:    func(err error) bool { return errors.Is(err, libp2p.ErrStreamReset) },
	},
}

type hashicorpPeer struct{ s *hashicorp.Session }

func startHashicorp(conn net.Conn, client bool, backlog int) (peer, error) {
	cfg := hashicorp.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.MaxStreamWindowSize = 1 << 20
	cfg.StreamOpenTimeout = 5 * time.Second // closes the session if our ACK never comes
	if backlog > 0 {
		cfg.AcceptBacklog = backlog
	}
	var s *hashicorp.Session
	var err error
	if client {
		s, err = hashicorp.Client(conn, cfg)
	} else {
		s, err = hashicorp.Server(conn, cfg)
	}
	return hashicorpPeer{s}, err
}

func (p hashicorpPeer) open(ctx context.Context) (net.Conn, error) {
	// OpenStream takes no context; it blocks while AcceptBacklog opens
	// wait for their ACK.
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() { c, err := p.s.OpenStream(); ch <- result{c, err} }()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		p.s.Close() // unblocks OpenStream
		return nil, ctx.Err()
	}
}
func (p hashicorpPeer) accept() (net.Conn, error)    { return p.s.AcceptStream() }
func (p hashicorpPeer) ping() (time.Duration, error) { return p.s.Ping() }
func (p hashicorpPeer) numStreams() int              { return p.s.NumStreams() }
func (p hashicorpPeer) close() error                 { return p.s.Close() }

type libp2pPeer struct{ s *libp2p.Session }

func startLibp2p(conn net.Conn, client bool, backlog int) (peer, error) {
	cfg := libp2p.DefaultConfig()
	cfg.LogOutput = io.Discard
	if backlog > 0 {
		cfg.AcceptBacklog = backlog
	}
	var s *libp2p.Session
	var err error
	if client {
		s, err = libp2p.Client(conn, cfg, nil)
	} else {
		s, err = libp2p.Server(conn, cfg, nil)
	}
	return libp2pPeer{s}, err
}

func (p libp2pPeer) open(ctx context.Context) (net.Conn, error) { return p.s.OpenStream(ctx) }
func (p libp2pPeer) accept() (net.Conn, error)                  { return p.s.AcceptStream() }
func (p libp2pPeer) ping() (time.Duration, error)               { return p.s.Ping() }
func (p libp2pPeer) numStreams() int                            { return p.s.NumStreams() }
func (p libp2pPeer) close() error                               { return p.s.Close() }

// interopPair starts our session and the other one over TCP; ourClient says
// which side is ours.
func interopPair(t *testing.T, im impl, ourClient bool, cfg *Config, backlog int) (*Session, peer) {
	t.Helper()
	a, b := tcpPair(t)
	if !ourClient {
		a, b = b, a
	}
	var ours *Session
	var err error
	if ourClient {
		ours, err = Client(a, cfg)
	} else {
		ours, err = Server(a, cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := im.start(b, !ourClient, backlog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ours.Close()
		theirs.close()
	})
	return ours, theirs
}

// forEachInterop runs f for each implementation with us in each role.
func forEachInterop(t *testing.T, f func(t *testing.T, im impl, ourClient bool)) {
	for _, im := range impls {
		for _, ourClient := range []bool{true, false} {
			role := "ours-server"
			if ourClient {
				role = "ours-client"
			}
			t.Run(im.name+"/"+role, func(t *testing.T) { f(t, im, ourClient) })
		}
	}
}

// peerEcho accepts streams on p and echoes each until EOF, then half-closes.
func peerEcho(p peer, im impl) {
	for {
		c, err := p.accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(c, c)
			im.closeWrite(c)
		}()
	}
}

// peerEchoOnce is echoOnce for a stream the other implementation opens.
func peerEchoOnce(p peer, im impl, data []byte) error {
	c, err := p.open(context.Background())
	if err != nil {
		return err
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = im.closeWrite(c)
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read: %w", rerr)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("echo differs: got %d bytes, want %d", len(got), len(data))
	}
	return nil
}

// TestInteropEcho moves several MB each way on concurrent streams (far more
// than a window, so window updates flow both ways), with half-close, in
// both directions of opening, and checks that every stream leaves both
// tables.
func TestInteropEcho(t *testing.T) {
	forEachInterop(t, func(t *testing.T, im impl, ourClient bool) {
		ours, theirs := interopPair(t, im, ourClient, nil, 0)
		go echoServer(ours)
		go peerEcho(theirs, im)
		size := 2 << 20 // twice the largest window
		if raceEnabled {
			size = 3 << 19
		}
		data := randBytes(size+3, 7)
		var wg sync.WaitGroup
		for i := range 3 {
			wg.Add(2)
			go func() {
				defer wg.Done()
				if err := echoOnce(ours, data); err != nil {
					t.Errorf("our stream %d: %v", i, err)
				}
			}()
			go func() {
				defer wg.Done()
				if err := peerEchoOnce(theirs, im, data); err != nil {
					t.Errorf("their stream %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		eventually(t, 10*time.Second, "streams to leave both tables", func() bool {
			return ours.NumStreams() == 0 && theirs.numStreams() == 0
		})
	})
}

// TestInteropOpenWith proves the other implementations accept a SYN on a
// data frame with a body: the first bytes arrive with the open.
func TestInteropOpenWith(t *testing.T) {
	forEachInterop(t, func(t *testing.T, im impl, ourClient bool) {
		ours, theirs := interopPair(t, im, ourClient, nil, 0)
		ctx := ctxT(t, 10*time.Second)
		st, err := ours.OpenWith(ctx, []byte("dial 10.0.0.1:443"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := theirs.accept()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len("dial 10.0.0.1:443"))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "dial 10.0.0.1:443" {
			t.Fatalf("peer read %q, %v", buf, err)
		}
		if _, err := c.Write([]byte("ok")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 2)
		if _, err := io.ReadFull(st, got); err != nil || string(got) != "ok" {
			t.Fatalf("we read %q, %v", got, err)
		}
		// The peer's ACK released our open slot.
		eventually(t, 5*time.Second, "the ACK", func() bool {
			st.mu.Lock()
			defer st.mu.Unlock()
			return !st.holdsSlot
		})
	})
}

// TestInteropAck proves we ACK the streams we accept: the other side may
// have only two un-ACKed opens at a time, so without ACKs the third open
// would block (and hashicorp would close the session after
// StreamOpenTimeout).
func TestInteropAck(t *testing.T) {
	forEachInterop(t, func(t *testing.T, im impl, ourClient bool) {
		ours, theirs := interopPair(t, im, ourClient, nil, 2)
		ctx := ctxT(t, 10*time.Second)
		for i := range 8 {
			if _, err := theirs.open(ctx); err != nil {
				t.Fatalf("open %d: %v", i, err)
			}
			if _, err := ours.Accept(ctx); err != nil {
				t.Fatalf("accept %d: %v", i, err)
			}
		}
		if _, err := theirs.ping(); err != nil {
			t.Fatalf("peer session after opens: %v", err)
		}
	})
}

// TestInteropPing pings both ways.
func TestInteropPing(t *testing.T) {
	forEachInterop(t, func(t *testing.T, im impl, ourClient bool) {
		ours, theirs := interopPair(t, im, ourClient, nil, 0)
		for range 3 {
			if _, err := ours.Ping(ctxT(t, 5*time.Second)); err != nil {
				t.Fatalf("our ping: %v", err)
			}
			if _, err := theirs.ping(); err != nil {
				t.Fatalf("their ping: %v", err)
			}
		}
	})
}

// TestInteropReset resets streams both ways: our Reset reaches the peer's
// Read; the peer's RST (libp2p's Reset, or hashicorp refusing a stream
// beyond its accept backlog) reaches ours.
func TestInteropReset(t *testing.T) {
	forEachInterop(t, func(t *testing.T, im impl, ourClient bool) {
		ours, theirs := interopPair(t, im, ourClient, nil, 1)
		ctx := ctxT(t, 10*time.Second)

		st, err := ours.OpenWith(ctx, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := theirs.accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		st.Reset()
		if _, err := c.Read(make([]byte, 1)); !im.isReset(err) {
			t.Fatalf("peer Read after our Reset: %v", err)
		}

		var theirsReset *Stream
		if im.reset != nil {
			c, err := theirs.open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("y")); err != nil {
				t.Fatal(err)
			}
			if theirsReset, err = ours.Accept(ctx); err != nil {
				t.Fatal(err)
			}
			im.reset(c)
		} else {
			// The peer's backlog holds one stream; the next is refused.
			if _, err := ours.Open(ctx); err != nil {
				t.Fatal(err)
			}
			if theirsReset, err = ours.Open(ctx); err != nil {
				t.Fatal(err)
			}
		}
		theirsReset.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			_, err := theirsReset.Read(make([]byte, 10))
			if err == nil {
				continue
			}
			if !errors.Is(err, ErrStreamReset) {
				t.Fatalf("our Read after the peer's RST: %v", err)
			}
			break
		}
		if _, err := theirsReset.Write([]byte("z")); !errors.Is(err, ErrStreamReset) {
			t.Fatalf("our Write after the peer's RST: %v", err)
		}
	})
}
