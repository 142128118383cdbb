package tunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The agent's destination policy (DESIGN.md section 4): every stream is
// checked before the agent dials, so that a compromised control plane
// cannot use the agent as an open proxy on the node's network.
//
// Allowed by default: the node's own addresses and its pod ranges. An
// operator adds ranges (service IPs, say) with AllowCIDRs and may narrow
// ports with AllowPorts. Loopback, link-local (which holds the cloud
// metadata endpoints 169.254.169.254 and fd00:ec2::254 is the IPv6 one)
// and other special addresses pass only when a node IP or an AllowCIDRs
// range names them explicitly; a pod range never lets them through.

// metadataV6 is the IPv6 address of the AWS instance metadata service; it
// sits in the unique-local range, so it is refused by name.
var metadataV6 = netip.MustParseAddr("fd00:ec2::254")

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
// that says why not.
func (p *destPolicy) check(ip netip.Addr, port uint16) error {
	ip = ip.Unmap()
	if len(p.ports) > 0 {
		if _, ok := slices.BinarySearch(p.ports, port); !ok {
			return &forbiddenError{fmt.Sprintf("port %d is not an allowed port", port)}
		}
	}
	if containsAddr(p.explicit, ip) {
		return nil
	}
	if kind := specialKind(ip); kind != "" {
		return &forbiddenError{fmt.Sprintf("%s is a %s address, refused unless allowed explicitly", ip, kind)}
	}
	if containsAddr(p.podCIDRs, ip) {
		return nil
	}
	return &forbiddenError{fmt.Sprintf("%s is not one of the node's addresses, pod ranges or allowed ranges", ip)}
}

// specialKind names the kind of an address that is never a normal
// destination, or returns "".
func specialKind(ip netip.Addr) string {
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.IsLinkLocalUnicast() || ip == metadataV6:
		return "link-local or metadata"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsMulticast() || ip.IsLinkLocalMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "multicast or broadcast"
	}
	return ""
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
// node IP; any other name through the node's resolver. Every address is
// checked, and the agent dials the checked addresses themselves, never the
// name again, so that DNS cannot change the answer between check and dial.
// A name whose addresses are all refused is refused with the first reason.
func (a *Agent) destinations(ctx context.Context, addr string) ([]netip.AddrPort, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("port %q is not a number from 1 to 65535", p)
	}
	ips, err := a.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	var refused error
	for _, ip := range ips {
		if err := a.policy.check(ip, uint16(port)); err != nil {
			refused = cmpOr(refused, err)
			continue
		}
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
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
// the first node IP for the node's own name, else the resolver's answer.
func (a *Agent) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, ok := parseIP(host); ok {
		return []netip.Addr{ip}, nil
	}
	if strings.EqualFold(host, a.cfg.NodeName) && len(a.cfg.NodeIPs) > 0 {
		return a.cfg.NodeIPs[:1], nil
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
