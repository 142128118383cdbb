// Package mux is a stream multiplexer that speaks the yamux wire format
// (spec.md in this directory; the format is hashicorp/yamux's) and
// interoperates with hashicorp/yamux and libp2p/go-yamux in either role. It
// carries the tunnel's streams over one TLS connection per agent.
//
// A Session runs over a net.Conn. Client and Server start its two sides; the
// server side opens streams (Open, or OpenWith to send a dial request in the
// same write as the open), the client side accepts them, or the other way
// round. A Stream is a net.Conn whose Close is a half-close, as in yamux.
//
// Where it differs from hashicorp/yamux, by design:
//
//   - No send goroutine: a writer writes its own frame to the connection, or
//     leaves it to the writer already there, who writes everything waiting in
//     one Write. A busy session gathers: once several senders' frames have
//     met in a write, the next senders yield once before writing, so that
//     goroutines ready with them share the write (write.go).
//   - One read loop per session, which reads data straight into the stream's
//     receive buffer and wakes only that stream's reader. Buffers are lists
//     of pooled 16 KiB chunks, given back as soon as they drain; the loop
//     itself waits on a 512-byte buffer and borrows a 16 KiB one only while
//     frames stream (read.go).
//   - Nothing a peer sends costs a goroutine or unbounded memory: pings are
//     answered through the writer, frames that carry nothing are rate
//     limited (Config.PingLimit, StreamLimit, EmptyFrameLimit), and a
//     session-wide budget bounds receive windows (Config.SessionReceiveBudget).
//   - Ending a session wakes every blocked call at once through one channel.
//
// Errors carry the "mux: " prefix. Callers branch with errors.Is on the
// sentinels (ErrSessionClosed, ErrConnLost, ErrWriteTimeout, ErrRemoteGoAway,
// ErrProtocol, ErrFlood, ErrStreamReset, ErrStreamClosed) or errors.As on
// *ProtocolError and *GoAwayError. The package logs nothing unless
// Config.Logger is set.
package mux
