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
// copy path (copy.go) that carries half-close. The Konnectivity gRPC
// frontend is package tunnel/konnectivity, and the Kubernetes API as the
// record of nodes and replicas is package tunnel/kube: both import this
// package, never the reverse, so the agent links neither gRPC nor
// client-go.
//
// The wire format is in PROTOCOL.md beside this file; the architecture and
// security model are in the project's DESIGN.md. The files, by concern
// (doc_test.go checks that every file is named here, and every name is a
// file):
//
// The protocol and the connection under it:
//
//	protocol.go          frames: hello, dial request and response, goodbye, replica count
//	transport.go         the Session interface, and its TLS + mux implementation
//	tls_batch.go         write batching and read-ahead under a TLS session
//	keepalive.go         pings that notice a dead peer on a silent network
//	errors.go            dial results, their HTTP statuses, DialError, ConfigError
//
// The server:
//
//	server.go            ServerConfig, Server, its accept loop, its counts
//	server_dial.go       Dial: the dial request down a new stream, and the tunnel it returns
//	lifecycle.go         what the server owns, and how Close ends it
//	accept.go            what a listener spends before it knows who calls: caps, accept rate
//	limits.go            the bounds on what anyone can make the server hold
//	admission.go         agent connections: hello, admission, registration
//	control.go           the server's writes on an agent's control stream: hello reply, replica count, goodbye
//	nodes.go             a node source's record as the truth of an agent's routes
//	routing.go           the routing table: destination → agent, and every change to it
//	pick.go              the agent a dial takes, and the count of its streams
//	replace.go           a second session for a node retires the first
//	ha.go                replicas sharing one agent address
//	frontend.go          the HTTP CONNECT frontend
//	hooks.go             what frontends outside this package build on
//	listen.go            unix-socket listeners with their mode and group from the start
//	metrics.go           Prometheus collectors of Server and Agent
//	transport_metrics.go registered agents by transport
//
// The agent:
//
//	agent.go             AgentConfig, Agent, Run: the reconnect loop and its backoff
//	agent_replicas.go    the replicas an agent holds, the count they report, the addresses they advertise
//	agent_session.go     a session: connect over TLS or SSH, hello, serve, the control stream
//	agent_dial.go        a dial request: the dial on the node, the answer, the tunnel
//	policy.go            the destinations an agent may dial
//
// Both ends:
//
//	copy.go              the copy path every tunneled byte takes
//	workers.go           the goroutines that run connections, directions and dials, kept for reuse
//	drain.go             draining: the server's Shutdown, the agent's drain frame
//	quiet.go             the agent's drain closes idle keep-alive tunnels
//	move.go              moving an open tunnel from a draining agent to its successor
//	handoff.go           the handoff socket between the two agents on a node
//	handoff_linux.go     its peer check (SO_PEERCRED); handoff_other.go elsewhere
//	watch.go             both ends watch a slow dial for the other side giving up
//
// The SSH transport and the SSH fallback:
//
//	ssh.go               an SSH connection as a Session, its channels as streams
//	ssh_stream.go        an SSH channel as a net.Conn with deadlines
//	ssh_listen.go        the server's SSH listener for agents, and its authentication
//	ssh_dial.go          the agent's SSH dial
//	ssh_fallback.go      nodes without an agent, reached through their sshd
package tunnel
