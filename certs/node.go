package certs

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// maxNodeName is the longest DNS-1123 subdomain, and so the longest
// Kubernetes node name.
const maxNodeName = 253

// Node is an agent certificate to generate: a node name and the IPs it may
// claim. The name becomes the Subject CN "system:node:NAME" and a DNS SAN;
// the IPs become IP SANs, the only addresses the server will let that
// agent declare from its certificate alone.
type Node struct {
	// Name is the Kubernetes node name, a DNS-1123 subdomain.
	Name string
	// IPs are the node's addresses, such as its InternalIP. May be empty.
	IPs []netip.Addr
}

// ParseNode parses "NAME" or "NAME=IP[,IP...]", the --node flag of the certs
// command, for example "worker-1=10.0.0.5,fd00::5". NAME must be a
// DNS-1123 subdomain; IPs are unmapped (::ffff:10.0.0.5 becomes 10.0.0.5)
// and repeats dropped. Errors quote the input and say what is wrong.
func ParseNode(s string) (Node, error) {
	name, list, hasIPs := strings.Cut(s, "=")
	if err := checkNodeName(name); err != nil {
		return Node{}, fmt.Errorf("certs: node %q: %w", s, err)
	}
	node := Node{Name: name}
	if !hasIPs {
		return node, nil
	}
	ips, err := parseIPList(list)
	if err != nil {
		return Node{}, fmt.Errorf("certs: node %q: %w", s, err)
	}
	node.IPs = ips
	return node, nil
}

// parseIPList parses a comma-separated list of at least one IP address.
func parseIPList(list string) ([]netip.Addr, error) {
	if list == "" {
		return nil, errors.New("no IP after '='")
	}
	var ips []netip.Addr
	for field := range strings.SplitSeq(list, ",") {
		if field == "" {
			return nil, errors.New("empty IP in list")
		}
		ip, err := netip.ParseAddr(field)
		if err != nil {
			return nil, fmt.Errorf("bad IP: %w", err)
		}
		if err := checkSANIP(ip); err != nil {
			return nil, err
		}
		if ip = ip.Unmap(); !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

// checkNode reports why n cannot be issued a certificate: a name that is
// not a DNS-1123 subdomain, or an IP a certificate cannot carry.
func checkNode(n Node) error {
	if err := checkNodeName(n.Name); err != nil {
		return err
	}
	for _, ip := range n.IPs {
		if err := checkSANIP(ip); err != nil {
			return fmt.Errorf("node %q: %w", n.Name, err)
		}
	}
	return nil
}

// checkSANIP reports why ip cannot be a certificate IP SAN, if it cannot.
func checkSANIP(ip netip.Addr) error {
	switch {
	case !ip.IsValid():
		return errors.New("invalid (zero) IP address")
	case ip.Zone() != "":
		return fmt.Errorf("IP %s has a zone; certificates cannot carry one", ip)
	}
	return nil
}

// checkNodeName reports why name is not a DNS-1123 subdomain, if it is not:
// lower-case labels of letters, digits and '-', each starting and ending
// with a letter or digit, joined by '.', at most 253 characters. Such a name
// has no '/' and is never "." or "..", so it is safe inside a file name.
func checkNodeName(name string) error {
	switch {
	case name == "":
		return errors.New("empty node name")
	case len(name) > maxNodeName:
		return fmt.Errorf("node name is %d characters, more than %d", len(name), maxNodeName)
	}
	for label := range strings.SplitSeq(name, ".") {
		if !validLabel(label) {
			return fmt.Errorf("node name %q is not a DNS-1123 subdomain: "+
				"want lower-case letters, digits, '-' and '.', each part starting and ending with a letter or digit", name)
		}
	}
	return nil
}

// validLabel reports whether label is one dot-separated part of a DNS-1123
// subdomain.
func validLabel(label string) bool {
	if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
		return false
	}
	for i := range len(label) {
		c := label[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
