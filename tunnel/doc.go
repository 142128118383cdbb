// Package tunnel carries the Kubernetes control plane's connections to its
// nodes through tunnels that the nodes open.
//
// A tunnel-agent on every node dials out to a tunnel-server beside
// kube-apiserver, proves its node identity with a client certificate over
// mutual TLS 1.3, and keeps one multiplexed session open (Agent; the
// session layer, in the yamux wire format, is package tunnel/mux). The server
// (Server) keeps a routing table from destinations to agents — node names
// and IPs, pod CIDRs, and a default route — and serves kube-apiserver's
// egress selector with HTTP CONNECT on a unix socket or on TCP with client
// certificates. Each CONNECT becomes a dial request on a new stream to the
// chosen agent; the agent dials the destination on the node's network and
// answers with a typed result, and bytes then flow both ways through one
// copy path (copy.go) that carries half-close.
//
// The wire format is in PROTOCOL.md beside this file; the architecture and
// security model are in the project's DESIGN.md. Files:
//
//	protocol.go  frames: hello, dial request and response
//	transport.go the Session interface and its TLS + mux implementation
//	server.go    Server: lifecycle, accept loops, Dial
//	registry.go  agent admission: what a certificate proves
//	routing.go   destination → agent
//	frontend.go  the HTTP CONNECT frontend
//	agent.go     Agent: connect, hello, reconnect, dial on the node
//	keepalive.go pings that notice a dead peer on a silent network
//	metrics.go   Prometheus collectors of Server and Agent
//	copy.go      the copy path
//	errors.go    dial results and their HTTP statuses
package tunnel
