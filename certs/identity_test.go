package certs

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
)

// certWith is an unsigned certificate with just the fields identity reads.
func certWith(cn string, dns []string, ips ...string) *x509.Certificate {
	c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
	for _, ip := range ips {
		c.IPAddresses = append(c.IPAddresses, net.ParseIP(ip))
	}
	return c
}

func TestNodeNames(t *testing.T) {
	fx := generate(t)
	tests := []struct {
		name string
		cert *x509.Certificate
		want []string
	}{
		{"generated agent", fx.agents["node-a"].Leaf, []string{"node-a"}},
		{"generated frontend client", fx.client.Leaf, nil},
		{"nil", nil, nil},
		{"CN only", certWith("system:node:w1", nil), []string{"w1"}},
		{"SANs only", certWith("someone", []string{"w1", "w1.example"}), []string{"w1", "w1.example"}},
		{"CN then SANs, deduplicated", certWith("system:node:w1", []string{"W1", "w2", "w2"}), []string{"w1", "w2"}},
		{"empty name after prefix", certWith("system:node:", nil), nil},
		{"prefix elsewhere", certWith("x-system:node:w1", nil), nil},
		{"prefix in other case", certWith("SYSTEM:NODE:W1", nil), []string{"w1"}},
		{"SANs in other case", certWith("", []string{"W1.Example"}), []string{"w1.example"}},
		{"wildcard and empty SANs", certWith("", []string{"*.nodes.example", "", "w3"}), []string{"w3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NodeNames(tt.cert); !slices.Equal(got, tt.want) {
				t.Errorf("NodeNames = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestProvesNode(t *testing.T) {
	fx := generate(t)
	agentA := fx.agents["node-a"].Leaf
	tests := []struct {
		name string
		cert *x509.Certificate
		node string
		want bool
	}{
		{"own name", agentA, "node-a", true},
		{"DNS case-insensitive", agentA, "NODE-A", true},
		{"other node", agentA, "node-b.example", false},
		{"prefix of name", agentA, "node", false},
		{"empty name", agentA, "", false},
		{"frontend client", fx.client.Leaf, "kube-apiserver", false},
		{"nil cert", nil, "node-a", false},
		{"CN case-insensitive", certWith("system:node:w1", nil), "W1", true},
		{"prefix in other case", certWith("System:Node:W1", nil), "w1", true},
		{"CN", certWith("system:node:w1", nil), "w1", true},
		{"wildcard SAN", certWith("", []string{"*.nodes"}), "a.nodes", false},
		{"wildcard SAN literally", certWith("", []string{"*.nodes"}), "*.nodes", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ProvesNode(tt.cert, tt.node); got != tt.want {
				t.Errorf("ProvesNode(%q) = %v, want %v", tt.node, got, tt.want)
			}
		})
	}
}

func TestProvesIP(t *testing.T) {
	fx := generate(t)
	agentA := fx.agents["node-a"].Leaf         // 10.0.0.1, fd00::1
	mappedSAN := certWith("", nil, "10.0.0.9") // net.ParseIP gives the 16-byte mapped form
	tests := []struct {
		name string
		cert *x509.Certificate
		ip   string
		want bool
	}{
		{"IPv4 SAN", agentA, "10.0.0.1", true},
		{"IPv6 SAN", agentA, "fd00::1", true},
		{"IPv4-mapped IPv6", agentA, "::ffff:10.0.0.1", true},
		{"mapped SAN, plain query", mappedSAN, "10.0.0.9", true},
		{"another node's IP", agentA, "10.0.0.2", false},
		{"not in SANs", agentA, "192.168.1.1", false},
		{"IPv6 with zone", agentA, "fd00::1%eth0", false},
		{"node without IPs", fx.agents["node-c"].Leaf, "10.0.0.1", false},
		{"nil cert", nil, "10.0.0.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ProvesIP(tt.cert, netip.MustParseAddr(tt.ip)); got != tt.want {
				t.Errorf("ProvesIP(%s) = %v, want %v", tt.ip, got, tt.want)
			}
		})
	}
	if ProvesIP(agentA, netip.Addr{}) {
		t.Error("ProvesIP(zero Addr) = true")
	}
}

func TestProvesIPAllocs(t *testing.T) {
	cert := certWith("", nil, "10.0.0.1", "10.0.0.2", "fd00::1")
	ip := netip.MustParseAddr("fd00::1")
	if n := testing.AllocsPerRun(100, func() { ProvesIP(cert, ip) }); n != 0 {
		t.Errorf("ProvesIP allocates %v times per call", n)
	}
}

func ExampleNodeNames() {
	cert := &x509.Certificate{
		Subject:  pkix.Name{CommonName: "system:node:worker-1", Organization: []string{"system:nodes"}},
		DNSNames: []string{"worker-1", "worker-1.internal"},
	}
	fmt.Println(NodeNames(cert))
	fmt.Println(ProvesNode(cert, "worker-1.internal"), ProvesNode(cert, "worker-2"))
	// Output:
	// [worker-1 worker-1.internal]
	// true false
}
