package certs

import (
	"crypto/x509"
	"net/netip"
	"strings"
)

// NodePrefix is the kubelet client-certificate convention "system:node:":
// a Subject CN of NodePrefix+NAME proves node NAME. Agents follow it so a
// node's kubelet credential, or one issued the same way, identifies the
// node to the tunnel-server.
const NodePrefix = "system:node:"

// NodeNames returns every node name cert proves: NAME from a Subject CN of
// "system:node:NAME", then each DNS SAN, in that order and without repeats
// (DNS names compare case-insensitively; the first spelling is kept). Empty
// and wildcard DNS SANs prove no node and are left out. It returns nil when
// cert names no node, as for the frontend's client certificate.
//
// The server logs and registers these names; it must have verified cert's
// chain and client-auth usage first.
func NodeNames(cert *x509.Certificate) []string {
	if cert == nil {
		return nil
	}
	var names []string
	if name, ok := cnNode(cert); ok {
		names = append(names, name)
	}
	for _, dns := range cert.DNSNames {
		if provingDNS(dns) && !containsFold(names, dns) {
			names = append(names, dns)
		}
	}
	return names
}

// ProvesNode reports whether cert proves node name: its Subject CN is
// "system:node:"+name exactly, or one of its DNS SANs equals name ignoring
// case. Wildcard SANs never match, so "*.nodes.example" proves no node.
func ProvesNode(cert *x509.Certificate, name string) bool {
	if cert == nil || name == "" {
		return false
	}
	if cn, ok := cnNode(cert); ok && cn == name {
		return true
	}
	for _, dns := range cert.DNSNames {
		if provingDNS(dns) && strings.EqualFold(dns, name) {
			return true
		}
	}
	return false
}

// ProvesIP reports whether ip is one of cert's IP SANs. Both sides are
// unmapped first, so ::ffff:10.0.0.1 matches a SAN of 10.0.0.1 and the
// other way round. An address with a zone never matches: certificates
// cannot carry one. It does not allocate, so the server may call it per
// declared address.
func ProvesIP(cert *x509.Certificate, ip netip.Addr) bool {
	if cert == nil || !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	for _, raw := range cert.IPAddresses {
		if san, ok := netip.AddrFromSlice(raw); ok && san.Unmap() == ip {
			return true
		}
	}
	return false
}

// cnNode returns NAME from a Subject CN of "system:node:NAME".
func cnNode(cert *x509.Certificate) (string, bool) {
	name, ok := strings.CutPrefix(cert.Subject.CommonName, NodePrefix)
	return name, ok && name != ""
}

// provingDNS reports whether a DNS SAN can prove a node name: not empty and
// not a wildcard.
func provingDNS(dns string) bool {
	return dns != "" && !strings.Contains(dns, "*")
}

// containsFold reports whether names holds s, ignoring case.
func containsFold(names []string, s string) bool {
	for _, n := range names {
		if strings.EqualFold(n, s) {
			return true
		}
	}
	return false
}
