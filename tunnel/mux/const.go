package mux

// Protocol constants. spec.md describes each of them byte by byte; the names
// here follow its sections.

// protoVersion is the only version of the framing that exists (spec.md,
// "Header").
const protoVersion uint8 = 0

// headerSize is the length of every frame header: version (1 byte), type (1),
// flags (2), stream ID (4) and length (4), all big endian.
const headerSize = 12

// HeaderSize is headerSize for callers that size what they write to fit
// the records under the session (tunnel/copy.go).
const HeaderSize = headerSize

// initialWindow is the receive window every stream starts with in both
// directions, before any window update (spec.md, "Flow control").
const initialWindow uint32 = 256 << 10

// frameType is the second byte of a header.
type frameType uint8

const (
	// typeData carries Length bytes of stream data after the header.
	typeData frameType = 0
	// typeWindowUpdate adds Length bytes to the stream's send window.
	typeWindowUpdate frameType = 1
	// typePing carries an opaque Length value that the peer echoes.
	typePing frameType = 2
	// typeGoAway ends the session; Length is the reason code.
	typeGoAway frameType = 3
)

// Flags (bytes 2–3 of a header). Data and window update frames may carry
// any of them; pings use SYN for a request and ACK for the answer.
const (
	flagSYN uint16 = 1 << 0 // opens a stream
	flagACK uint16 = 1 << 1 // accepts a stream (or answers a ping)
	flagFIN uint16 = 1 << 2 // the sender will send no more data on the stream
	flagRST uint16 = 1 << 3 // the stream is aborted in both directions
)

// Go away reason codes (the Length of a typeGoAway frame).
const (
	goAwayNormal   uint32 = 0
	goAwayProtocol uint32 = 1
	goAwayInternal uint32 = 2
)

// maxStreamID is the highest stream ID a 32-bit field can carry.
const maxStreamID = 1<<32 - 1
