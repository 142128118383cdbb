package benchmarks

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
)

// Mode selects what the target does with a connection: the first byte of
// the Header.
type Mode byte

// Target modes (see the package documentation).
const (
	ModeEcho   Mode = 'E' // echo until the client half-closes
	ModeSink   Mode = 'S' // verify the client's pattern stream, answer a SinkResult
	ModeSource Mode = 'R' // send Length bytes of the pattern stream
)

// Unlimited is a source Length that never ends: the target sends until the
// client goes away.
const Unlimited = math.MaxInt64

// HeaderLen is the size of a Header on the wire:
//
//	mode (1 byte) | seed (8 bytes, big-endian) | length (8 bytes, big-endian)
const HeaderLen = 1 + 8 + 8

// Header is the first thing a client sends on a connection to the target.
type Header struct {
	Mode   Mode
	Seed   uint64 // selects the Pattern stream (sink and source)
	Length int64  // bytes the source sends; ignored by echo and sink
}

// Append encodes h onto b.
func (h Header) Append(b []byte) []byte {
	b = append(b, byte(h.Mode))
	b = binary.BigEndian.AppendUint64(b, h.Seed)
	return binary.BigEndian.AppendUint64(b, uint64(h.Length))
}

// parseHeader decodes a header and checks its mode and length.
func parseHeader(b []byte) (Header, error) {
	h := Header{
		Mode:   Mode(b[0]),
		Seed:   binary.BigEndian.Uint64(b[1:]),
		Length: int64(binary.BigEndian.Uint64(b[9:])),
	}
	switch {
	case h.Mode != ModeEcho && h.Mode != ModeSink && h.Mode != ModeSource:
		return h, fmt.Errorf("benchmarks: unknown mode 0x%02x", b[0])
	case h.Length < 0:
		return h, fmt.Errorf("benchmarks: negative length %d", h.Length)
	}
	return h, nil
}

// SinkResultLen is the size of a SinkResult on the wire:
//
//	received (8 bytes, big-endian) | mismatch offset (8 bytes, big-endian, -1 for none)
const SinkResultLen = 16

// SinkResult is the sink's answer once the client has half-closed.
type SinkResult struct {
	Received int64 // bytes the sink read
	Mismatch int64 // offset of the first byte that differed from the stream, or -1
}

func (r SinkResult) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(r.Received))
	return binary.BigEndian.AppendUint64(b, uint64(r.Mismatch))
}

func parseSinkResult(b []byte) SinkResult {
	return SinkResult{
		Received: int64(binary.BigEndian.Uint64(b)),
		Mismatch: int64(binary.BigEndian.Uint64(b[8:])),
	}
}

// Period is the length of the pseudorandom block a pattern stream repeats.
// It is odd (2^20 - 3, a prime), so no power-of-two buffer size divides it.
const Period = 1<<20 - 3

// MaxSpan is the longest slice Pattern.At returns in one piece.
const MaxSpan = 1 << 20

// Pattern is the pseudorandom stream of one seed: byte i of the stream is
// block[i mod Period]. It is read-only once made and safe to share.
type Pattern struct {
	block []byte // Period bytes, then the first MaxSpan bytes again
}

// NewPattern generates the stream of seed (ChaCha8, about 2 MiB of work).
func NewPattern(seed uint64) *Pattern {
	var key [32]byte
	binary.BigEndian.PutUint64(key[:], seed)
	block := make([]byte, Period+MaxSpan)
	rand.NewChaCha8(key).Read(block[:Period])
	copy(block[Period:], block[:MaxSpan])
	return &Pattern{block: block}
}

// At returns min(n, MaxSpan) bytes of the stream from offset off. The slice
// aliases the pattern: callers must not modify it.
func (p *Pattern) At(off int64, n int) []byte {
	i := int(off % Period)
	return p.block[i : i+min(n, MaxSpan)]
}

// MismatchError is a byte that differs from what the stream says it should
// be: data was corrupted, lost, repeated or reordered on the way.
type MismatchError struct {
	Offset int64 // position in the stream of the first differing byte
	What   string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("benchmarks: %s: byte %d differs from the expected stream (data corrupted, lost or reordered)", e.What, e.Offset)
}

// Verifier checks consecutive bytes against a Pattern stream.
type Verifier struct {
	p *Pattern
	n int64
}

// NewVerifier checks p's stream from offset 0.
func NewVerifier(p *Pattern) *Verifier { return &Verifier{p: p} }

// Check verifies b as the next bytes of the stream.
func (v *Verifier) Check(b []byte) error {
	for len(b) > 0 {
		want := v.p.At(v.n, len(b))
		if !bytes.Equal(b[:len(want)], want) {
			return &MismatchError{Offset: v.n + firstDiff(b, want), What: "pattern stream"}
		}
		v.n += int64(len(want))
		b = b[len(want):]
	}
	return nil
}

// Count returns the number of bytes verified so far.
func (v *Verifier) Count() int64 { return v.n }

func firstDiff(a, b []byte) int64 {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return int64(i)
		}
	}
	return int64(min(len(a), len(b)))
}
