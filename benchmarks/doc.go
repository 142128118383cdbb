// Package benchmarks measures the tunnel against a direct TCP connection on
// the same machine, in the same run.
//
// It holds the small wire protocol the load tool's target speaks, shared by
// the tunnel-bench command (benchmarks/tunnel-bench) and the Go benchmarks of
// the data path (bench_test.go):
//
//   - A client opens a connection to the target, directly or through a
//     tunnel-server's CONNECT frontend, and first sends a Header of HeaderLen
//     bytes: a Mode byte, a 64-bit seed and a 64-bit length.
//   - ModeEcho: the target echoes every byte until the client half-closes,
//     then half-closes back.
//   - ModeSink: the client sends the Pattern stream of the seed and
//     half-closes; the target checks every byte against the same stream and
//     answers with a SinkResult (bytes received, first mismatching offset).
//   - ModeSource: the target sends Length bytes of the seed's Pattern stream
//     and half-closes; the client checks every byte.
//
// Every byte the tools move is verified this way: a mismatch is an error,
// never a figure.
//
// The package also holds the probe (ProbeServer, ProbeAgent): a plain
// three-hop relay with one TLS 1.3 connection per tunnel and no
// multiplexer, behind the same CONNECT request as the tunnel — the least an
// encrypted tunnel can cost on the machine, which tunnel-bench measures
// beside the tunnel and the direct path (DESIGN.md section 5).
//
// Pattern streams repeat a pseudorandom block whose length (Period) is odd,
// so that no power-of-two buffer divides it: a chunk that is lost, repeated
// or reordered anywhere in a stream shows up as a mismatch, while checking
// costs one memory comparison per byte.
package benchmarks
