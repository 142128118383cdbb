//go:build linux

package attack

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// Attack 2: every identity form an attacker might hold on the agent port,
// each trying to register as (or route traffic of) node-b, whose real agent
// is registered. Certificates the CA did not issue, or not for client
// authentication, or outside their validity, fail the handshake; a name or
// route the certificate does not prove is refused with the reason. A DNS SAN
// and a CN of system:node:NAME with the prefix in any letter case are node
// identities (certs.NodeNames), but only for their own name. Afterwards every
// CONNECT for node-b, by IP and by name, still reaches node-b's real agent
// and none reaches a hostile session.
func TestAgentPortIdentities(t *testing.T) {
	t.Parallel()
	const (
		nodeC = "node-c" // named by CN=SYSTEM:NODE:node-c; no agent otherwise
		nodeD = "node-d" // named by a DNS SAN only; no agent otherwise
	)
	cs := newCerts(t, nodeA+"="+nodeAIP, nodeB+"="+nodeBIP)
	srv := startServer(t, cs, serverOpts{})
	agentB := startAgent(t, srv, agentOpts{node: nodeB, ips: []string{nodeBIP}})
	echoB := startTarget(t, nodeBIP, serveEcho)
	mustTunnel(t, srv, echoB)
	base := baseline(t, srv.adminAddr)

	certA := cs.agentPair(t, nodeA)
	claimB := hello{Version: 1, Node: nodeB, IPs: []string{nodeBIP}}
	cases := []struct {
		name  string
		cert  tls.Certificate
		hello hello
		want  string // "handshake", a rejection reason, or "registered"
	}{
		{"certificate from an unknown CA", cs.mint(t, certSpec{cn: "system:node:" + nodeB, dns: []string{nodeB}, ips: []string{nodeBIP}, issuer: byForeignCA}), claimB, "handshake"},
		{"self-signed CN=system:node:node-b", cs.mint(t, certSpec{cn: "system:node:" + nodeB, ips: []string{nodeBIP}, issuer: selfSigned}), claimB, "handshake"},
		{"expired certificate", cs.mint(t, certSpec{cn: "system:node:" + nodeB, ips: []string{nodeBIP},
			notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)}), claimB, "handshake"},
		{"certificate not yet valid", cs.mint(t, certSpec{cn: "system:node:" + nodeB, ips: []string{nodeBIP},
			notBefore: time.Now().Add(time.Hour), notAfter: time.Now().Add(48 * time.Hour)}), claimB, "handshake"},
		{"certificate without clientAuth EKU", cs.mint(t, certSpec{cn: "system:node:" + nodeB, ips: []string{nodeBIP},
			eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), claimB, "handshake"},
		{"CN=SYSTEM:NODE:node-c (other case), hello naming node-b", cs.mint(t, certSpec{cn: "SYSTEM:NODE:" + nodeC}), claimB, "identity"},
		{"CN=System:Node:node-c (other case), hello naming node-b", cs.mint(t, certSpec{cn: "System:Node:" + nodeC}), claimB, "identity"},
		{"CN=System:Node:node-c (other case), claiming node-b's IP", cs.mint(t, certSpec{cn: "System:Node:" + nodeC}),
			hello{Version: 1, Node: nodeC, IPs: []string{nodeBIP}}, "routes"},
		{"CN=node-b without the system:node: prefix", cs.mint(t, certSpec{cn: nodeB, ips: []string{nodeBIP}}), claimB, "identity"},
		{"IP SAN of node-b only", cs.mint(t, certSpec{cn: "some-client", ips: []string{nodeBIP}}), claimB, "identity"},
		{"empty node name in CN and hello", cs.mint(t, certSpec{cn: "system:node:"}), hello{Version: 1, Node: ""}, "identity"},
		{"wildcard DNS SAN", cs.mint(t, certSpec{cn: "x", dns: []string{"*", "node-*", "*.cluster.local"}, ips: []string{nodeBIP}}), claimB, "identity"},
		{"node-a's certificate, hello naming node-b", certA, claimB, "identity"},
		{"node-a's certificate, hello naming NODE-B", certA, hello{Version: 1, Node: strings.ToUpper(nodeB)}, "identity"},
		{"node-a's certificate, hello naming node-b without IPs", certA, hello{Version: 1, Node: nodeB}, "identity"},
		{"node-a's certificate claiming node-b's IP", certA, hello{Version: 1, Node: nodeA, IPs: []string{nodeAIP, nodeBIP}}, "routes"},
		{"node-a's certificate claiming a pod CIDR over node-b", certA, hello{Version: 1, Node: nodeA, PodCIDRs: []string{"127.0.0.0/30"}}, "routes"},
		{"node-a's certificate asking for the default route", certA, hello{Version: 1, Node: nodeA, DefaultRoute: true}, "routes"},
		{"DNS SAN node-d only, hello naming node-b", cs.mint(t, certSpec{cn: "kubelet-client", dns: []string{nodeD}}), claimB, "identity"},
		{"DNS SAN node-d only, claiming node-b's IP", cs.mint(t, certSpec{cn: "kubelet-client", dns: []string{nodeD}}),
			hello{Version: 1, Node: nodeD, IPs: []string{nodeBIP}}, "routes"},
		{"hello of protocol version 2", certA, hello{Version: 2, Node: nodeA}, "version"},
		// A DNS SAN proves its own name, and so does the CN prefix in any
		// letter case (commit bc0ffc0): registered, but only as that node.
		{"DNS SAN node-d only, hello naming node-d", cs.mint(t, certSpec{cn: "kubelet-client", dns: []string{nodeD}}),
			hello{Version: 1, Node: nodeD}, "registered"},
		{"CN=SYSTEM:NODE:node-c (other case), hello naming node-c", cs.mint(t, certSpec{cn: "SYSTEM:NODE:" + nodeC}),
			hello{Version: 1, Node: nodeC}, "registered"},
	}
	var sessions []*served
	var peers []*rawPeer
	defer func() {
		for _, p := range peers {
			p.Close()
		}
	}()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := mustScrape(t, srv.adminAddr)
			got, detail, peer := tryRegister(srv, cs, tc.cert, tc.hello)
			t.Logf("%s: %s", got, detail)
			if got != tc.want && !(tc.want == "handshake" && got == "refused before the hello reply") {
				t.Errorf("got %s (%s), want %s", got, detail, tc.want)
			}
			if peer != nil {
				peers = append(peers, peer)
				sessions = append(sessions, peer.serve())
			}
			if tc.want == "registered" {
				return
			}
			// The refusal is counted under its reason.
			wantReason := tc.want
			took, ok := within(3*time.Second, func() bool {
				return metric(srv.adminAddr, "tunnel_server_agent_rejections_total", "reason", wantReason) >
					before.get("tunnel_server_agent_rejections_total", "reason", wantReason)
			})
			if !ok {
				t.Errorf(`tunnel_server_agent_rejections_total{reason=%q} did not grow within %s`, wantReason, took.Round(time.Millisecond))
			}
		})
	}

	// node-b's traffic, by IP and by name, reaches node-b's real agent only.
	okBefore := metric(agentB.adminAddr, "tunnel_agent_dials_total", "result", "ok")
	const rounds = 4
	for i := 0; i < rounds; i++ {
		for _, dest := range []string{echoB, net.JoinHostPort(nodeB, portOf(echoB))} {
			if _, err := tunnelWorks(srv, dest); err != nil {
				t.Errorf("node-b's traffic after the attempts: %v", err)
			}
		}
	}
	if got := metric(agentB.adminAddr, "tunnel_agent_dials_total", "result", "ok") - okBefore; got != 2*rounds {
		t.Errorf("node-b's real agent dialed %v of the %d CONNECTs for node-b", got, 2*rounds)
	}
	for _, s := range sessions {
		if d := s.attracted(); len(d) > 0 {
			t.Errorf("a hostile session was sent dials for %q", d)
		}
	}
	if n := metric(srv.adminAddr, "tunnel_server_agents_connected"); n != 3 {
		t.Errorf("tunnel_server_agents_connected = %v, want 3 (node-b's agent, the node-c and node-d sessions)", n)
	}
	for _, p := range peers {
		p.Close()
	}
	expectBaseline(t, "tunnel-server", srv.adminAddr, base)
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// tryRegister connects to the agent port with cert, sends h and says what
// happened: "handshake" (TLS refused), "refused before the hello reply"
// (TLS completed on the client side, then the connection failed with no
// reply), the rejection reason of the reply, or "registered" — then the
// peer is returned, still open.
func tryRegister(s *server, cs *certSet, cert tls.Certificate, h hello) (string, string, *rawPeer) {
	p, err := dialRaw(s.agentAddr, cs.clientTLS(&cert), 0)
	if err != nil {
		return "handshake", err.Error(), nil
	}
	r, err := p.register(h)
	if err != nil {
		p.Close()
		if strings.Contains(err.Error(), "tls:") {
			return "handshake", "after the client's handshake: " + err.Error(), nil
		}
		return "refused before the hello reply", err.Error(), nil
	}
	if r.Error == "" {
		return "registered", fmt.Sprintf("registered as %s", h.Node), p
	}
	p.Close()
	return reasonOf(r.Error), "refused: " + r.Error, nil
}

// reasonOf maps a hello reply's error to the rejection reason the server
// counts it under (README, tunnel_server_agent_rejections_total).
func reasonOf(msg string) string {
	switch {
	case strings.Contains(msg, "does not prove"), strings.Contains(msg, "names no node"):
		return "identity"
	case strings.Contains(msg, "version"):
		return "version"
	case strings.Contains(msg, "IP SAN"), strings.Contains(msg, "pod CIDR"), strings.Contains(msg, "default route"),
		strings.Contains(msg, "trusted agent routes"):
		return "routes"
	}
	return "other (" + msg + ")"
}

// Attack 3: every identity form on the TCP+mTLS CONNECT frontend, whose CA
// also signs the agents. A certificate the agent port would take as proof
// of a node — CN=system:node:NAME with the prefix in any letter case, or a
// DNS SAN — is a node credential and is refused, unless its CN is named in
// --frontend-allowed-names; a proper frontend client certificate is
// accepted. "Accepted" means the CONNECT got an HTTP answer (502: no agent
// serves the destination); "refused" means none, the TLS handshake or the
// connection failing first.
func TestFrontendIdentities(t *testing.T) {
	t.Parallel()
	cs := newCerts(t, nodeB+"="+nodeBIP)
	client := cs.pair(t, "client") // CN=kube-apiserver
	nodeCert := cs.agentPair(t, nodeB)
	cnNode := cs.mint(t, certSpec{cn: "system:node:" + nodeB})
	cnUpper := cs.mint(t, certSpec{cn: "SYSTEM:NODE:" + nodeB})
	cnMixed := cs.mint(t, certSpec{cn: "System:Node:" + nodeB})
	dnsOnly := cs.mint(t, certSpec{cn: "node-b-kubelet", dns: []string{nodeB}})
	dnsNoCN := cs.mint(t, certSpec{dns: []string{nodeB}})
	dnsMixed := cs.mint(t, certSpec{cn: "kubelet-client", dns: []string{"Node-B"}})
	other := cs.mint(t, certSpec{cn: "metrics-scraper"})
	expired := cs.mint(t, certSpec{cn: "kube-apiserver", notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	foreign := cs.mint(t, certSpec{cn: "kube-apiserver", issuer: byForeignCA})
	serverAuthOnly := cs.mint(t, certSpec{cn: "kube-apiserver", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})

	type row struct {
		name   string
		cert   *tls.Certificate
		accept bool
	}
	servers := []struct {
		name    string
		allowed []string
		rows    []row
	}{
		{"no allowed names", nil, []row{
			{"frontend client certificate (CN=kube-apiserver)", &client, true},
			{"another client certificate of the CA", &other, true},
			{"no client certificate", nil, false},
			{"client certificate from an unknown CA", &foreign, false},
			{"expired client certificate", &expired, false},
			{"client certificate without clientAuth EKU", &serverAuthOnly, false},
			{"agent certificate from tunnel-server certs", &nodeCert, false},
			{"CN=system:node:node-b", &cnNode, false},
			{"CN=SYSTEM:NODE:node-b (other case)", &cnUpper, false},
			{"CN=System:Node:node-b (other case)", &cnMixed, false},
			{"DNS SAN node-b only", &dnsOnly, false},
			{"DNS SAN node-b, no CN", &dnsNoCN, false},
			{"DNS SAN Node-B (other case)", &dnsMixed, false},
		}},
		{"allowed names listed", []string{"kube-apiserver", "node-b-kubelet", "system:node:" + nodeB, "System:Node:" + nodeB}, []row{
			{"frontend client certificate (CN=kube-apiserver, listed)", &client, true},
			{"another client certificate of the CA (not listed)", &other, false},
			{"DNS SAN node-b only, CN listed", &dnsOnly, true},
			{"CN=system:node:node-b, listed", &cnNode, true},
			{"CN=System:Node:node-b, listed", &cnMixed, true},
			{"CN=SYSTEM:NODE:node-b, not listed", &cnUpper, false},
			{"DNS SAN Node-B, CN not listed", &dnsMixed, false},
			{"agent certificate from tunnel-server certs (CN listed)", &nodeCert, true},
		}},
	}
	for _, sv := range servers {
		t.Run(sv.name, func(t *testing.T) {
			srv := startServer(t, cs, serverOpts{frontend: true, allowedNames: sv.allowed})
			base := baseline(t, srv.adminAddr)
			for _, r := range sv.rows {
				t.Run(r.name, func(t *testing.T) {
					accepted, detail := frontendVerdict(srv, cs.clientTLS(r.cert))
					t.Logf("accepted=%v: %s", accepted, detail)
					if accepted != r.accept {
						want := map[bool]string{true: "accepted", false: "refused"}[r.accept]
						t.Errorf("%s: %s, want %s", r.name, detail, want)
					}
				})
			}
			expectBaseline(t, "tunnel-server", srv.adminAddr, base)
		})
	}
}

// frontendVerdict connects to the TCP frontend with cfg and sends a
// CONNECT for a destination no agent serves: any HTTP answer means the
// client got through.
func frontendVerdict(s *server, cfg *tls.Config) (bool, string) {
	c, err := dialFrontend(s, cfg)
	if err != nil {
		return false, "refused at the handshake: " + err.Error()
	}
	defer c.Close()
	_, code, status, err := request(c, connectRequest(net.JoinHostPort(noNodeIP, "1")), 10*time.Second)
	if err != nil {
		return false, "refused after the client's handshake: " + err.Error()
	}
	return code != 0, fmt.Sprintf("answered %q", status)
}
