package tunnel

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// The wire format is described byte by byte in PROTOCOL.md. Every message
// on the control stream and at the head of a dial stream is one frame:
//
//	type (1 byte) | length (2 bytes, big-endian) | payload (length bytes)

// ProtocolVersion and MinProtocolVersion are the newest and the oldest
// versions of the tunnel protocol this build speaks. The agent offers the
// range in its hello and the server picks the newest both speak
// (PROTOCOL.md, "Versioning"); a release keeps speaking the version before
// its own, so servers can be upgraded first and agents after.
const (
	ProtocolVersion    = 1
	MinProtocolVersion = 1
)

// Frame types (PROTOCOL.md, "Frames").
const (
	frameHello        byte = 0x01 // agent → server, JSON hello
	frameHelloReply   byte = 0x02 // server → agent, JSON hello reply
	frameDialRequest  byte = 0x03 // server → agent, first frame of a dial stream
	frameDialResponse byte = 0x04 // agent → server, answer to a dial request
	frameDrain        byte = 0x05 // agent → server, control stream: route here only as a last resort
	frameReplicas     byte = 0x06 // server → agent, control stream: the replica count changed (ha.go)
	frameGoodbye      byte = 0x07 // server → agent, control stream: why the server ends the session
	frameMove         byte = 0x08 // agent → server, control stream: move this tunnel (move.go)
	frameAdopt        byte = 0x09 // agent → server, first frame of a stream the agent opens: carry this moved tunnel
)

const (
	frameHeaderLen  = 3
	maxFramePayload = 1<<16 - 1
	// maxAddressLen bounds the destination in a dial request (a host name of
	// at most 253 bytes, a colon and a port, with room to spare).
	maxAddressLen    = 512
	dialRequestFixed = 8 + 4 // dial ID, timeout in milliseconds
)

var (
	// errFrameType is returned when a frame of an unexpected type arrives.
	errFrameType = errors.New("tunnel: unexpected frame type")
	// errFrameTooLarge is returned when a payload does not fit in a frame.
	errFrameTooLarge = errors.New("tunnel: frame payload too large")
)

// writeFrame writes one frame in a single Write, so that it travels in one
// session data frame.
func writeFrame(w io.Writer, typ byte, payload []byte) error {
	buf, err := appendFrame(nil, typ, payload)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// appendFrame appends one frame to b.
func appendFrame(b []byte, typ byte, payload []byte) ([]byte, error) {
	if len(payload) > maxFramePayload {
		return b, errFrameTooLarge
	}
	b = append(b, typ, 0, 0)
	binary.BigEndian.PutUint16(b[len(b)-2:], uint16(len(payload)))
	return append(b, payload...), nil
}

// readFrame reads one frame of the wanted type. It reads exactly the frame's
// bytes and nothing after them, so raw tunnel bytes that follow a dial
// response stay in the stream.
func readFrame(r io.Reader, want byte) ([]byte, error) {
	typ, payload, err := readAnyFrame(r)
	if err == nil && typ != want {
		err = fmt.Errorf("%w: got 0x%02x, want 0x%02x", errFrameType, typ, want)
	}
	return payload, err
}

// readAnyFrame reads one frame, whatever its type, and nothing after it.
func readAnyFrame(r io.Reader) (typ byte, payload []byte, err error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	payload = make([]byte, binary.BigEndian.Uint16(hdr[1:3]))
	if _, err := io.ReadFull(r, payload); err != nil {
		return hdr[0], nil, fmt.Errorf("tunnel: short frame: %w", err)
	}
	return hdr[0], payload, nil
}

// Hello is the first message of a session, sent by the agent on the
// control stream. It says who the agent is and what it can reach; the server
// accepts only what the agent's credential proves (DESIGN.md section 4).
type Hello struct {
	// Version is the newest protocol version the agent speaks.
	Version int `json:"version"`
	// MinVersion is the oldest it speaks; zero means Version alone.
	MinVersion int `json:"minVersion,omitempty"`
	// Node is the node name the agent claims; its certificate must prove it.
	Node string `json:"node"`
	// IPs are the node's addresses; dials to them go to this agent.
	IPs []netip.Addr `json:"ips,omitempty"`
	// PodCIDRs are ranges routed to this agent by longest prefix.
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
	// DefaultRoute asks for every destination no other route claims.
	DefaultRoute bool `json:"defaultRoute,omitempty"`
	// Agent identifies the agent build, for logs only.
	Agent string `json:"agent,omitempty"`
	// Held are the IDs of the server replicas the agent already holds a
	// session to (ha.go); one of them answers with HelloReply.Held.
	Held []string `json:"held,omitempty"`
}

// HelloReply is the server's answer to a Hello.
type HelloReply struct {
	// Version is the protocol version the session will use.
	Version int `json:"version"`
	// ServerID identifies the server replica (for high availability).
	ServerID string `json:"serverID"`
	// ServerCount is the number of replicas sharing the server's address,
	// this one included (ha.go).
	ServerCount int `json:"serverCount,omitempty"`
	// Address, if set, is where this replica can be reached directly
	// ("host:port"), for an agent that loses its session to it.
	Address string `json:"address,omitempty"`
	// Peers are the addresses the other replicas advertise, by server ID,
	// as far as this one knows them: the agent connects to them directly.
	Peers map[string]string `json:"peers,omitempty"`
	// Error, when set, says why the registration was rejected; the server
	// closes the session after sending it.
	Error string `json:"error,omitempty"`
	// Held, with Error, says the agent's hello named this replica among
	// those it holds: nothing was registered, and the agent tries again for
	// another replica.
	Held bool `json:"held,omitempty"`
	// Moves says the server takes move frames and adopt streams: the agent
	// may hand its tunnels to its successor (move.go).
	Moves bool `json:"moves,omitempty"`
}

// goodbye is the payload of a goodbye frame: why the server is about to
// end the session, for the agent's log.
type goodbye struct {
	Reason string `json:"reason"`
}

// replicaCount is the payload of a replicas frame.
type replicaCount struct {
	ServerCount int               `json:"serverCount"`
	Peers       map[string]string `json:"peers,omitempty"` // as in HelloReply
}

func decodeReplicaCount(payload []byte) (replicaCount, error) {
	var r replicaCount
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("tunnel: bad replicas frame: %w", err)
	}
	if r.ServerCount < 1 {
		return r, fmt.Errorf("tunnel: bad replicas frame: serverCount %d", r.ServerCount)
	}
	return r, nil
}

// decodeGoodbye returns a goodbye frame's reason, cut to a length fit
// for a log line; "" if the payload is not a goodbye.
func decodeGoodbye(payload []byte) string {
	var g goodbye
	if json.Unmarshal(payload, &g) != nil {
		return ""
	}
	if len(g.Reason) > maxReasonLen {
		g.Reason = g.Reason[:maxReasonLen] + "..."
	}
	return g.Reason
}

// maxReasonLen bounds a reason the agent logs from the server.
const maxReasonLen = 512

func encodeJSONFrame(w io.Writer, typ byte, v any) error {
	b, err := appendJSONFrame(nil, typ, v)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// appendJSONFrame appends a frame whose payload is v in JSON to b.
func appendJSONFrame(b []byte, typ byte, v any) ([]byte, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return b, err
	}
	return appendFrame(b, typ, payload)
}

func decodeHello(payload []byte) (Hello, error) {
	var h Hello
	if err := json.Unmarshal(payload, &h); err != nil {
		return h, fmt.Errorf("tunnel: bad hello: %w", err)
	}
	return h, nil
}

// negotiateVersion picks the newest protocol version both this build and
// an agent offering h speak, or explains why there is none.
func negotiateVersion(h Hello) (int, error) {
	lo := h.MinVersion
	if lo == 0 {
		lo = h.Version
	}
	v := min(h.Version, ProtocolVersion)
	if v < max(lo, MinProtocolVersion) {
		return 0, fmt.Errorf("the agent speaks protocol versions %d to %d, this server %d to %d: upgrade the %s",
			lo, h.Version, MinProtocolVersion, ProtocolVersion, olderSide(h.Version))
	}
	return v, nil
}

// olderSide names the side to upgrade when an agent that speaks up to
// version agentMax and this server share no version.
func olderSide(agentMax int) string {
	if agentMax < ProtocolVersion {
		return "agent"
	}
	return "server"
}

func decodeHelloReply(payload []byte) (HelloReply, error) {
	var h HelloReply
	if err := json.Unmarshal(payload, &h); err != nil {
		return h, fmt.Errorf("tunnel: bad hello reply: %w", err)
	}
	return h, nil
}

// splitTarget splits a dial's destination, "host:port", checking it on
// the way: a host with no URL or space characters in it, and a port in
// plain decimal from 1 to 65535 ("+80", "0x50" and " 80" are not ports).
// The frontends, the server and the agent all check with it, so a
// malformed destination is refused where it enters (400), never by the
// node.
func splitTarget(addr string) (host string, port uint16, err error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil || host == "" || strings.ContainsAny(host, "/?#@ ") {
		return "", 0, fmt.Errorf("%s is not host:port", quoteShort(addr))
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("port %s is not a number from 1 to 65535", quoteShort(p))
	}
	return host, uint16(n), nil
}

// isHostPort reports whether addr is "host:port" with a host and a port
// number.
func isHostPort(addr string) bool {
	_, _, err := splitTarget(addr)
	return err == nil
}

// dialRequest asks the agent to dial Address within Timeout.
type dialRequest struct {
	ID      uint64
	Timeout time.Duration
	Address string
}

// appendDialRequest encodes r as a whole frame appended to b.
func appendDialRequest(b []byte, r dialRequest) []byte {
	n := dialRequestFixed + len(r.Address)
	b = append(b, frameDialRequest, byte(n>>8), byte(n))
	b = binary.BigEndian.AppendUint64(b, r.ID)
	b = binary.BigEndian.AppendUint32(b, uint32(r.Timeout/time.Millisecond))
	return append(b, r.Address...)
}

func decodeDialRequest(payload []byte) (dialRequest, error) {
	if len(payload) < dialRequestFixed+1 || len(payload) > dialRequestFixed+maxAddressLen {
		return dialRequest{}, fmt.Errorf("tunnel: dial request of %d bytes", len(payload))
	}
	return dialRequest{
		ID:      binary.BigEndian.Uint64(payload),
		Timeout: time.Duration(binary.BigEndian.Uint32(payload[8:])) * time.Millisecond,
		Address: string(payload[dialRequestFixed:]),
	}, nil
}

// appendDialID encodes a move or adopt frame (typ) for dial id.
func appendDialID(b []byte, typ byte, id uint64) []byte {
	b = append(b, typ, 0, 8)
	return binary.BigEndian.AppendUint64(b, id)
}

func decodeDialID(payload []byte) (uint64, error) {
	if len(payload) != 8 {
		return 0, fmt.Errorf("tunnel: dial ID of %d bytes", len(payload))
	}
	return binary.BigEndian.Uint64(payload), nil
}

// dialResponse is the agent's answer: a result code and, for failures, the
// error text seen on the node.
type dialResponse struct {
	Result  Result
	Message string
}

func appendDialResponse(b []byte, r dialResponse) []byte {
	msg := r.Message
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	n := 1 + len(msg)
	b = append(b, frameDialResponse, byte(n>>8), byte(n), byte(r.Result))
	return append(b, msg...)
}

func decodeDialResponse(payload []byte) (dialResponse, error) {
	if len(payload) < 1 {
		return dialResponse{}, errors.New("tunnel: empty dial response")
	}
	r := Result(payload[0])
	if !r.onWire() {
		return dialResponse{}, fmt.Errorf("tunnel: unknown dial result %d", payload[0])
	}
	return dialResponse{Result: r, Message: string(payload[1:])}, nil
}
