// Package certs loads, checks and generates the key material of a tunnel.
//
// The tunnel-agent on every node and the tunnel-server beside the
// kube-apiserver talk TLS 1.3 with certificates on both ends (DESIGN.md,
// section 4). This package holds what both binaries share.
//
// # Loading
//
// LoadPool reads a CA bundle for tls.Config.RootCAs or ClientCAs, and
// LoadKeyPair reads a certificate chain and its private key and checks that
// they belong together. Both are read at start-up and on reload, so their
// errors name the file and say what is wrong with it: missing, no PEM
// blocks, a certificate that does not parse, a key that does not match.
//
// # Identity
//
// An agent's node name comes from its verified certificate, never from what
// the agent says in its hello. NodeNames and ProvesNode read the kubelet's
// client-certificate convention, a Subject CN of "system:node:NAME" (see
// NodePrefix), and DNS SANs; ProvesIP reads IP SANs. The server accepts a
// hello only for names and addresses these functions confirm, so a
// compromised node cannot attract another node's traffic. They look at the
// certificate alone: the caller must already have verified its chain and
// extended key usage, as crypto/tls does for a client certificate.
//
// # Generating
//
// Generate writes a fresh CA and, signed by it, a server certificate, a
// client certificate for the kube-apiserver's CONNECT frontend and one agent
// certificate per node. It exists for quick starts and tests; a production
// cluster may issue the same shapes from its own PKI. Keys are ECDSA P-256,
// stored as PKCS #8 PEM ("PRIVATE KEY") with mode 0600. ParseNode reads the
// --node flag that lists the agents to issue for. IssueAgents issues agent
// certificates of the same shape in memory under an existing CA, for load
// tests that need thousands of node identities.
//
// All errors start with "certs: ", once. An error about a file is a
// *FileError that names the file and what it was to hold, so that a
// command given a certificate and its key can blame the right flag; an
// Options field Generate cannot use is an *OptionError naming the field.
package certs
