package mux

import (
	"encoding/binary"
	"fmt"
)

// header is one encoded frame header (spec.md, "Header"):
//
//	byte 0     version (always 0)
//	byte 1     type: 0 data, 1 window update, 2 ping, 3 go away
//	bytes 2-3  flags: SYN 0x1, ACK 0x2, FIN 0x4, RST 0x8
//	bytes 4-7  stream ID (0 for ping and go away)
//	bytes 8-11 length: body bytes (data), window delta (window update),
//	           opaque value (ping) or reason code (go away)
type header [headerSize]byte

// makeHeader encodes a header.
func makeHeader(t frameType, flags uint16, id, length uint32) header {
	var h header
	h[0] = protoVersion
	h[1] = byte(t)
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint32(h[4:8], id)
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

func (h *header) version() uint8   { return h[0] }
func (h *header) typ() frameType   { return frameType(h[1]) }
func (h *header) flags() uint16    { return binary.BigEndian.Uint16(h[2:4]) }
func (h *header) streamID() uint32 { return binary.BigEndian.Uint32(h[4:8]) }
func (h *header) length() uint32   { return binary.BigEndian.Uint32(h[8:12]) }

// String formats the header for logs and test failures.
func (h *header) String() string {
	return fmt.Sprintf("v%d type=%d flags=%#x stream=%d length=%d",
		h.version(), h.typ(), h.flags(), h.streamID(), h.length())
}
