package tunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// The agent's destination policy (DESIGN.md section 4): every stream is
// checked before the agent dials, so that a compromised control plane
// cannot use the agent as an open proxy on the node's network.
//
// Allowed by default: the node's own addresses and its pod ranges. An
// operator adds ranges (service IPs, say) with AllowCIDRs and may narrow
// ports with AllowPorts. Special addresses — loopback, link-local (which
// holds the cloud metadata endpoints 169.254.169.254 and, in the
// unique-local range, fd00:ec2::254), unspecified, multicast and broadcast
// — pass only when a node IP or an AllowCIDRs range names them: a range
// no wider than the special range itself (127.0.0.0/8 names loopback,
// 0.0.0.0/0 does not). A pod range never lets them through. An IPv6
// address that carries an IPv4 address (NAT64 64:ff9b::/96 and
// 64:ff9b:1::/48, 6to4 2002::/16, IPv4-compatible ::/96, Teredo
// 2001::/32) is refused if the IPv4 address it carries is special and not
// named, so that a broad IPv6 range cannot reach 127.0.0.1 or the metadata
// endpoint through a translator.

// special is a range of addresses that is never a normal destination.
type special struct {
	prefix netip.Prefix
	kind   string
}

var specials = []special{
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local or metadata"},
	{netip.MustParsePrefix("fe80::/10"), "link-local or metadata"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "link-local or metadata"}, // AWS's IPv6 metadata
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast or broadcast"},
	{netip.MustParsePrefix("ff00::/8"), "multicast or broadcast"},
	{netip.MustParsePrefix("255.255.255.255/32"), "multicast or broadcast"},
}

// destPolicy is the compiled form of an agent's policy.
type destPolicy struct {
	explicit []netip.Prefix // node IPs as single-address prefixes, and AllowCIDRs
	podCIDRs []netip.Prefix
	ports    []uint16 // sorted; empty allows every port
}

func newDestPolicy(nodeIPs []netip.Addr, podCIDRs, allow []netip.Prefix, ports []uint16) *destPolicy {
	p := &destPolicy{podCIDRs: podCIDRs, ports: slices.Sorted(slices.Values(ports))}
	for _, ip := range nodeIPs {
		p.explicit = append(p.explicit, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
	}
	p.explicit = append(p.explicit, allow...)
	return p
}

// forbiddenError is a destination the policy refuses.
type forbiddenError struct{ reason string }

func (e *forbiddenError) Error() string { return e.reason }

// check returns nil if the agent may dial ip:port, or a *forbiddenError
// that says why not and which of the agent's flags would allow it: the
// reason travels to the server's log and kube-apiserver's, far from the
// node whose setting it is.
func (p *destPolicy) check(ip netip.Addr, port uint16) error {
	ip = ip.Unmap()
	if len(p.ports) > 0 {
		if _, ok := slices.BinarySearch(p.ports, port); !ok {
			return &forbiddenError{fmt.Sprintf("port %d is not an allowed port: the agent's --allow-port would allow it", port)}
		}
	}
	for _, a := range append([]netip.Addr{ip}, embeddedIPv4(ip)...) {
		if sp, ok := specialRange(a); ok && !p.names(a, sp.prefix) {
			what := ip.String()
			if a != ip {
				what = fmt.Sprintf("%s carries %s, which", ip, a)
			}
			return &forbiddenError{fmt.Sprintf("%s is a %s address, refused unless named explicitly: by the agent's --node-ip, or an --allow-cidr within %s", what, sp.kind, sp.prefix)}
		}
	}
	if containsAddr(p.explicit, ip) || containsAddr(p.podCIDRs, ip) {
		return nil
	}
	return &forbiddenError{fmt.Sprintf("%s is not one of the node's addresses, pod ranges or allowed ranges: the agent's --allow-cidr would allow it", ip)}
}

// names reports whether a node IP or an allowed range holds ip and is no
// wider than within, the special range ip is in.
func (p *destPolicy) names(ip netip.Addr, within netip.Prefix) bool {
	for _, e := range p.explicit {
		if e.Contains(ip) && e.Bits() >= within.Bits() {
			return true
		}
	}
	return false
}

// specialRange returns the special range ip is in, if any.
func specialRange(ip netip.Addr) (special, bool) {
	for _, sp := range specials {
		if sp.prefix.Contains(ip) {
			return sp, true
		}
	}
	return special{}, false
}

// IPv6 ranges whose addresses carry an IPv4 address.
var (
	nat64      = netip.MustParsePrefix("64:ff9b::/96")
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour  = netip.MustParsePrefix("2002::/16")
	v4Compat   = netip.MustParsePrefix("::/96")
	teredo     = netip.MustParsePrefix("2001::/32")
)

// embeddedIPv4 returns the IPv4 addresses an IPv6 address carries: the
// last 32 bits of a NAT64 or IPv4-compatible address (and of a local-use
// NAT64 one, the common /96 layout), bits 16-47 of a 6to4 address, and
// Teredo's server and (inverted) client addresses.
func embeddedIPv4(ip netip.Addr) []netip.Addr {
	if !ip.Is6() {
		return nil
	}
	b := ip.As16()
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte(b[i : i+4])) }
	switch {
	case nat64.Contains(ip), nat64Local.Contains(ip), v4Compat.Contains(ip):
		return []netip.Addr{v4(12)}
	case sixToFour.Contains(ip):
		return []netip.Addr{v4(2)}
	case teredo.Contains(ip):
		client := [4]byte{^b[12], ^b[13], ^b[14], ^b[15]}
		return []netip.Addr{v4(4), netip.AddrFrom4(client)}
	}
	return nil
}

func containsAddr(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// destinations turns a dial request's "host:port" into the addresses the
// agent may dial: an IP literal as it is; the node's own name as its first
// node IP; any other name, with ResolveNames, through the node's resolver. Every address is
// checked, and the agent dials the checked addresses themselves, never the
// name again, so that DNS cannot change the answer between check and dial.
// A name whose addresses are all refused is refused with the first reason.
func (a *Agent) destinations(ctx context.Context, addr string) ([]netip.AddrPort, error) {
	host, port, err := splitTarget(addr)
	if err != nil {
		return nil, err
	}
	ips, err := a.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	var refused error
	for _, ip := range ips {
		if err := a.policy.check(ip, port); err != nil {
			refused = cmpOr(refused, err)
			continue
		}
		out = append(out, netip.AddrPortFrom(ip.Unmap(), port))
	}
	if len(out) == 0 {
		if _, literal := parseIP(host); !literal && refused != nil {
			refused = &forbiddenError{fmt.Sprintf("%s resolves to %v: %v", host, ips, refused)}
		}
		return nil, refused
	}
	return out, nil
}

// resolve returns the addresses of host: itself if it is an IP literal,
// the first node IP for the node's own name, else, with ResolveNames, the
// resolver's answer.
func (a *Agent) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, ok := parseIP(host); ok {
		return []netip.Addr{ip}, nil
	}
	if strings.EqualFold(host, a.cfg.NodeName) && len(a.cfg.NodeIPs) > 0 {
		return a.cfg.NodeIPs[:1], nil
	}
	if !a.cfg.ResolveNames {
		return nil, &forbiddenError{fmt.Sprintf("%s is a name, and this agent looks up none but its node's: the agent's --resolve-names would allow it", quoteShort(host))}
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = fmt.Errorf("lookup %s: no addresses", host)
	}
	return ips, err
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
