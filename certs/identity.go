package certs

import (
	"crypto/x509"
	"net/netip"
	"slices"
	"strings"
)

// NodePrefix is the kubelet client-certificate convention "system:node:":
// a Subject CN of NodePrefix+NAME proves node NAME. Agents follow it so a
// node's kubelet credential, or one issued the same way, identifies the
// node to the tunnel-server.
const NodePrefix = "system:node:"

// NodeNames returns every node name cert proves, in lower case: NAME from a
// Subject CN of "system:node:NAME" (the prefix in any letter case), then
// each DNS SAN, in that order and without repeats. Empty and wildcard DNS
// SANs prove no node and are left out. It returns nil when cert names no
// node, as for the frontend's client certificate.
//
// It is the one place that decides whether a certificate is a node
// credential: the agent port registers these names (after verifying cert's
// chain and client-auth usage), and the CONNECT frontend refuses any
// certificate for which it returns a name.
func NodeNames(cert *x509.Certificate) []string {
	if cert == nil {
		return nil
	}
	var names []string
	if name, ok := cnNode(cert); ok {
		names = append(names, name)
	}
	for _, dns := range cert.DNSNames {
		if dns = strings.ToLower(dns); provingDNS(dns) && !slices.Contains(names, dns) {
			names = append(names, dns)
		}
	}
	return names
}

// ProvesNode reports whether cert proves node name, ignoring case: name is
// one of NodeNames(cert). Wildcard SANs never match, so "*.nodes.example"
// proves no node.
func ProvesNode(cert *x509.Certificate, name string) bool {
	return name != "" && slices.Contains(NodeNames(cert), strings.ToLower(name))
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

// cnNode returns NAME, in lower case, from a Subject CN of
// "system:node:NAME" with the prefix in any letter case.
func cnNode(cert *x509.Certificate) (string, bool) {
	cn := cert.Subject.CommonName
	if len(cn) <= len(NodePrefix) || !strings.EqualFold(cn[:len(NodePrefix)], NodePrefix) {
		return "", false
	}
	return strings.ToLower(cn[len(NodePrefix):]), true
}

// provingDNS reports whether a DNS SAN can prove a node name: not empty and
// not a wildcard.
func provingDNS(dns string) bool {
	return dns != "" && !strings.Contains(dns, "*")
}
