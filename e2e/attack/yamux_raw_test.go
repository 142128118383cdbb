//go:build linux

package attack

// A raw peer on the agent port: TLS 1.3 with whatever certificate the test
// gives it, then yamux frames written by hand (hashicorp/yamux spec.md) —
// a 12-byte header of version 0, type, flags, stream ID and length — and
// the tunnel's hello on stream 1 (PROTOCOL.md). It does exactly what it is
// told, nothing more, so it can say what no real agent would.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// yamux frame types and flags.
const (
	yData         byte = 0
	yWindowUpdate byte = 1
	yPing         byte = 2
	yGoAway       byte = 3

	ySYN uint16 = 1
	yACK uint16 = 2
	yFIN uint16 = 4
	yRST uint16 = 8

	yHeaderSize   = 12
	yInitWindow   = 256 << 10 // yamux's initial stream window
	controlStream = 1         // the agent's first stream
)

// yHeader encodes one yamux header.
func yHeader(typ byte, flags uint16, stream, length uint32) []byte {
	h := make([]byte, yHeaderSize)
	h[0] = 0 // version
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], stream)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

// yFrame is one decoded yamux frame; data only for type data.
type yFrame struct {
	version byte
	typ     byte
	flags   uint16
	stream  uint32
	length  uint32
	data    []byte
}

// readYFrame reads one frame, refusing data frames over 16 MiB.
func readYFrame(r io.Reader) (yFrame, error) {
	var h [yHeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return yFrame{}, err
	}
	f := yFrame{version: h[0], typ: h[1], flags: binary.BigEndian.Uint16(h[2:]),
		stream: binary.BigEndian.Uint32(h[4:]), length: binary.BigEndian.Uint32(h[8:])}
	if f.typ == yData && f.length > 0 {
		if f.length > 16<<20 {
			return f, fmt.Errorf("data frame of %d bytes", f.length)
		}
		f.data = make([]byte, f.length)
		if _, err := io.ReadFull(r, f.data); err != nil {
			return f, err
		}
	}
	return f, nil
}

// tunnelFrame encodes a tunnel protocol frame: type, 2-byte length, payload.
func tunnelFrame(typ byte, payload []byte) []byte {
	b := []byte{typ, byte(len(payload) >> 8), byte(len(payload))}
	return append(b, payload...)
}

const (
	frameHello      byte = 0x01
	frameHelloReply byte = 0x02
	frameDialReq    byte = 0x03
)

// hello is the agent's hello, as JSON (PROTOCOL.md).
type hello struct {
	Version      int      `json:"version"`
	Node         string   `json:"node"`
	IPs          []string `json:"ips,omitempty"`
	PodCIDRs     []string `json:"podCIDRs,omitempty"`
	DefaultRoute bool     `json:"defaultRoute,omitempty"`
	Agent        string   `json:"agent,omitempty"`
}

type helloReply struct {
	Version  int    `json:"version"`
	ServerID string `json:"serverID"`
	Error    string `json:"error"`
}

// rawPeer is a TLS connection to the agent port driven by hand.
type rawPeer struct {
	tcp  net.Conn
	conn *tls.Conn
	wmu  sync.Mutex
}

// dialRaw connects to addr and completes TLS 1.3 with cfg. rcvbuf, if not
// zero, is the socket's receive buffer, set before connecting: a small one
// makes the server's writes to a peer that does not read block sooner.
// With TLS 1.3 the server checks the client certificate after the client's
// handshake is done: a refused certificate shows as an error on the first
// read.
func dialRaw(addr string, cfg *tls.Config, rcvbuf int) (*rawPeer, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			return errors.Join(err, serr)
		}
	}
	tcp, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(tcp, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		tcp.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return &rawPeer{tcp: tcp, conn: conn}, nil
}

func (p *rawPeer) Close() error { return p.conn.Close() }

// write sends b in one TLS write.
func (p *rawPeer) write(b []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := p.conn.Write(b)
	return err
}

// openControl opens stream 1 (a window update with SYN).
func (p *rawPeer) openControl() error {
	return p.write(yHeader(yWindowUpdate, ySYN, controlStream, 0))
}

// sendHello opens stream 1 and sends h on it.
func (p *rawPeer) sendHello(h hello) error {
	payload, err := json.Marshal(h)
	if err != nil {
		return err
	}
	f := tunnelFrame(frameHello, payload)
	b := append(yHeader(yWindowUpdate, ySYN, controlStream, 0), yHeader(yData, 0, controlStream, uint32(len(f)))...)
	return p.write(append(b, f...))
}

// readReply reads frames until the hello reply on stream 1 is whole,
// answering the server's pings, within timeout.
func (p *rawPeer) readReply(timeout time.Duration) (helloReply, error) {
	p.conn.SetReadDeadline(time.Now().Add(timeout))
	defer p.conn.SetReadDeadline(time.Time{})
	var ctrl []byte
	for {
		f, err := readYFrame(p.conn)
		if err != nil {
			return helloReply{}, err
		}
		switch {
		case f.typ == yPing && f.flags&ySYN != 0:
			p.write(yHeader(yPing, yACK, 0, f.length))
		case f.typ == yGoAway:
			return helloReply{}, fmt.Errorf("go away (code %d) before the hello reply", f.length)
		case f.typ == yData && f.stream == controlStream:
			ctrl = append(ctrl, f.data...)
			if len(ctrl) >= 3 {
				n := int(ctrl[1])<<8 | int(ctrl[2])
				if len(ctrl) >= 3+n {
					if ctrl[0] != frameHelloReply {
						return helloReply{}, fmt.Errorf("frame type %#x on the control stream, want a hello reply", ctrl[0])
					}
					var r helloReply
					if err := json.Unmarshal(ctrl[3:3+n], &r); err != nil {
						return helloReply{}, fmt.Errorf("hello reply %q: %w", ctrl[3:3+n], err)
					}
					return r, nil
				}
			}
		}
	}
}

// register sends h and returns the server's reply.
func (p *rawPeer) register(h hello) (helloReply, error) {
	if err := p.sendHello(h); err != nil {
		return helloReply{}, fmt.Errorf("send hello: %w", err)
	}
	return p.readReply(10 * time.Second)
}

// serve reads frames until the session ends, answering pings and counting
// the streams the server opens (dial requests: traffic the server routed
// to this peer), and returns their dial addresses.
type served struct {
	mu    sync.Mutex
	dials []string
	end   error
	done  chan struct{}
}

func (p *rawPeer) serve() *served {
	s := &served{done: make(chan struct{})}
	go func() {
		defer close(s.done)
		bufs := map[uint32][]byte{}
		for {
			f, err := readYFrame(p.conn)
			if err != nil {
				s.mu.Lock()
				s.end = err
				s.mu.Unlock()
				return
			}
			switch {
			case f.typ == yPing && f.flags&ySYN != 0:
				p.write(yHeader(yPing, yACK, 0, f.length))
			case (f.typ == yData || f.typ == yWindowUpdate) && f.stream%2 == 0 && f.stream != 0:
				if f.flags&ySYN != 0 {
					bufs[f.stream] = nil
					p.write(yHeader(yWindowUpdate, yACK, f.stream, 0))
				}
				if f.typ == yData {
					b := append(bufs[f.stream], f.data...)
					bufs[f.stream] = b
					if len(b) >= 3 && b[0] == frameDialReq {
						if n := int(b[1])<<8 | int(b[2]); len(b) >= 3+n && n > 12 {
							s.mu.Lock()
							s.dials = append(s.dials, string(b[3+12:3+n]))
							s.mu.Unlock()
							// Refuse it: result 5, then close the stream.
							resp := tunnelFrame(0x04, append([]byte{5}, "hostile peer"...))
							p.write(append(yHeader(yData, 0, f.stream, uint32(len(resp))), resp...))
							p.write(yHeader(yWindowUpdate, yFIN, f.stream, 0))
							delete(bufs, f.stream)
						}
					}
				}
			}
		}
	}()
	return s
}

// attracted returns the dial addresses the server sent this peer.
func (s *served) attracted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.dials...)
}

// waitClosed reads and discards until the server ends the connection, and
// returns how long that took, or false if it is still open after timeout.
func (p *rawPeer) waitClosed(timeout time.Duration) (time.Duration, error, bool) {
	start := time.Now()
	p.conn.SetReadDeadline(start.Add(timeout))
	buf := make([]byte, 64<<10)
	for {
		_, err := p.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return time.Since(start), err, false
			}
			return time.Since(start), err, true
		}
	}
}
