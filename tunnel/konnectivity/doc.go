// Package konnectivity serves kube-apiserver's egress selector with
// "proxyProtocol: GRPC" over a unix socket: the Konnectivity
// ProxyService.Proxy stream (k8s.io/apiserver/pkg/server/egressselector,
// and the client in
// sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client), in
// front of a tunnel.Server.
//
// It is a package of its own because it links gRPC: it imports package
// tunnel, never the reverse, so the node agent's binary links no gRPC
// (DESIGN.md section 7). Behind it runs the same Server.Dial as behind the
// server's CONNECT frontend — routing, policy, limits, metrics — and the
// same copy path (Server.Pipe), which sees the stream as a net.Conn.
//
// tunnel/PROTOCOL.md, "The gRPC frontend", describes the packets; in short:
//
//	→ DIAL_REQ {protocol "tcp", address, random}
//	← DIAL_RSP {random, connectID ≠ 0}      or  {random, error: the reason}
//	↔ DATA {connectID, data}                 never empty
//	→ CLOSE_REQ {connectID}  ← CLOSE_RSP {connectID}   the client waits 10 s
//	← CLOSE_RSP {connectID}                  the node side ended
//	→ DIAL_CLS {random}                      the client gave up on the dial
//
// The protocol lets one stream carry many connections; kube-apiserver's
// client opens one gRPC connection and one stream per dial, and that is all
// this frontend serves: a second DIAL_REQ on a stream is refused with an
// error.
//
// Files: frontend.go holds Serve, the ProxyService implementation and its
// metric; stream.go one stream's state machine (the DIAL_REQ, the dial, the
// receive loop); conn.go the stream as the net.Conn the copy path carries.
package konnectivity
