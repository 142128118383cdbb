package mux

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

func TestHeader(t *testing.T) {
	cases := []struct {
		t      frameType
		flags  uint16
		id     uint32
		length uint32
		bytes  [headerSize]byte
	}{
		{typeData, flagSYN, 1, 5, [12]byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5}},
		{typeWindowUpdate, flagACK | flagFIN, 0x01020304, 1 << 20, [12]byte{0, 1, 0, 6, 1, 2, 3, 4, 0, 0x10, 0, 0}},
		{typePing, flagACK, 0, 0xdeadbeef, [12]byte{0, 2, 0, 2, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef}},
		{typeGoAway, 0, 0, goAwayProtocol, [12]byte{0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{typeWindowUpdate, flagRST, maxStreamID, 0, [12]byte{0, 1, 0, 8, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}},
	}
	for _, c := range cases {
		h := makeHeader(c.t, c.flags, c.id, c.length)
		if [headerSize]byte(h) != c.bytes {
			t.Errorf("makeHeader(%d, %#x, %d, %d) = %x; want %x", c.t, c.flags, c.id, c.length, h, c.bytes)
		}
		if h.version() != 0 || h.typ() != c.t || h.flags() != c.flags || h.streamID() != c.id || h.length() != c.length {
			t.Errorf("decoding %x gave %s", c.bytes, h.String())
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	bad := []func(c *Config){
		func(c *Config) { c.AcceptBacklog = 0 },
		func(c *Config) { c.OpenBacklog = 0 },
		func(c *Config) { c.MaxStreamWindow = initialWindow - 1 },
		func(c *Config) { c.MaxStreamWindow = 1<<30 + 1 },
		func(c *Config) { c.SessionReceiveBudget = -1 },
		func(c *Config) { c.WriteTimeout = 0 },
		func(c *Config) { c.MaxFrame = 100 },
		func(c *Config) { c.PingLimit.Rate = 0 },
		func(c *Config) { c.StreamLimit.Burst = 0 },
		func(c *Config) { c.EmptyFrameLimit = FloodLimit{} },
	}
	for i, f := range bad {
		c := DefaultConfig()
		f(c)
		if err := c.Validate(); err == nil {
			t.Errorf("case %d: Validate accepted %+v", i, c)
		}
		a, b := net.Pipe()
		if _, err := Client(a, c); err == nil {
			t.Errorf("case %d: Client accepted an invalid config", i)
		}
		a.Close()
		b.Close()
	}
}

func TestErrors(t *testing.T) {
	flood := &ProtocolError{Kind: KindPingFlood}
	if !errors.Is(flood, ErrFlood) || !errors.Is(flood, ErrProtocol) {
		t.Errorf("%v should match ErrFlood and ErrProtocol", flood)
	}
	window := &ProtocolError{Kind: KindWindowExceeded}
	if errors.Is(window, ErrFlood) || !errors.Is(window, ErrProtocol) {
		t.Errorf("%v should match ErrProtocol only", window)
	}
	if !errors.Is(&GoAwayError{Code: 1}, ErrRemoteGoAway) {
		t.Error("GoAwayError should match ErrRemoteGoAway")
	}
	var ne net.Error
	if !errors.As(errTimeout, &ne) || !ne.Timeout() || !errors.Is(errTimeout, os.ErrDeadlineExceeded) {
		t.Error("errTimeout should be a net.Error timeout matching os.ErrDeadlineExceeded")
	}
	if !errors.Is(errResetByPeer, ErrStreamReset) {
		t.Error("errResetByPeer should match ErrStreamReset")
	}
}

func TestBucket(t *testing.T) {
	b := newBucket(FloodLimit{Rate: 10, Burst: 3})
	now := time.Now()
	for i := range 3 {
		if !b.allow(now) {
			t.Fatalf("event %d within the burst refused", i)
		}
	}
	if b.allow(now) {
		t.Fatal("event beyond the burst allowed")
	}
	later := now.Add(100 * time.Millisecond) // one token at 10/s
	if !b.allow(later) || b.allow(later) {
		t.Fatal("refill after 100 ms should allow exactly one event")
	}
}
