package tunnel

import (
	"errors"
	"net/netip"
	"testing"
)

func TestDestPolicy(t *testing.T) {
	p := newDestPolicy(
		[]netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("127.0.0.1")},
		[]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("0.0.0.0/0")},
		[]netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:ec2::254/128")},
		nil)
	narrow := newDestPolicy([]netip.Addr{netip.MustParseAddr("10.0.0.5")}, nil, nil, []uint16{10250, 443})
	broad := newDestPolicy(nil, nil, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, nil)
	named := newDestPolicy(nil, nil, []netip.Prefix{netip.MustParsePrefix("::/0"), netip.MustParsePrefix("127.0.0.0/8")}, nil)
	for _, c := range []struct {
		p    *destPolicy
		addr string
		ok   bool
	}{ // a refusal's reason is checked in TestDestPolicyReasons
		{p, "10.0.0.5:10250", true},            // node IP
		{p, "[::ffff:10.0.0.5]:10250", true},   // the same, IPv4-mapped
		{p, "10.244.1.7:8080", true},           // pod range
		{p, "10.100.0.1:443", true},            // allowed range (services)
		{p, "127.0.0.1:10250", true},           // loopback named as a node IP
		{p, "127.0.0.2:10250", false},          // other loopback: the 0/0 pod range does not let it in
		{p, "169.254.169.254:80", false},       // metadata
		{p, "[fe80::1]:80", false},             // link-local
		{p, "[fd00:ec2::254]:80", true},        // metadata v6, but allowed explicitly
		{p, "0.0.0.0:80", false},               // unspecified
		{p, "224.0.0.1:80", false},             // multicast
		{p, "192.168.1.1:22", true},            // via the 0/0 pod range
		{narrow, "10.0.0.5:10250", true},       // allowed port
		{narrow, "10.0.0.5:22", false},         // port not allowed
		{narrow, "10.0.0.6:443", false},        // not the node
		{narrow, "[fd00:ec2::254]:443", false}, // metadata v6 by name
		{narrow, "[::1]:443", false},           // loopback v6
		{broad, "192.168.1.1:22", true},        // a broad range allows the ordinary
		{broad, "[2001:db8::1]:22", true},
		{broad, "127.0.0.1:22", false},                    // but names no special range
		{broad, "169.254.169.254:80", false},              // metadata
		{broad, "0.1.2.3:80", false},                      // "this network" reaches the host
		{broad, "[::1]:22", false},                        // loopback v6
		{broad, "[64:ff9b::7f00:1]:22", false},            // NAT64 of 127.0.0.1
		{broad, "[64:ff9b::a9fe:a9fe]:80", false},         // NAT64 of the metadata address
		{broad, "[64:ff9b:1::a9fe:a9fe]:80", false},       // local-use NAT64
		{broad, "[2002:7f00:1::1]:22", false},             // 6to4 of 127.0.0.1
		{broad, "[::7f00:1]:22", false},                   // IPv4-compatible 127.0.0.1
		{broad, "[2001:0:a9fe:a9fe::1]:80", false},        // Teredo server 169.254.169.254
		{broad, "[2001:0:c000:201::80ff:fffe]:80", false}, // Teredo client 127.0.0.1, inverted
		{broad, "[64:ff9b::c000:201]:80", true},           // NAT64 of an ordinary address
		{named, "[64:ff9b::7f00:1]:22", true},             // loopback named, so its NAT64 form too
		{named, "169.254.169.254:80", false},
	} {
		ap := netip.MustParseAddrPort(c.addr)
		err := c.p.check(ap.Addr(), ap.Port())
		var fe *forbiddenError
		if c.ok != (err == nil) || err != nil && !errors.As(err, &fe) {
			t.Errorf("check(%s) = %v, want allowed=%v", c.addr, err, c.ok)
		}
	}
}

// TestDestPolicyReasons: each refusal says why, and which of the agent's
// flags would allow the destination.
func TestDestPolicyReasons(t *testing.T) {
	p := newDestPolicy([]netip.Addr{netip.MustParseAddr("10.0.0.5")}, nil, []netip.Prefix{netip.MustParsePrefix("::/0")}, []uint16{10250})
	for _, c := range []struct {
		addr, want string
	}{
		{"10.0.0.5:22", "port 22 is not an allowed port: the agent's --allow-port would allow it"},
		{"10.0.0.6:10250", "10.0.0.6 is not one of the node's addresses, pod ranges or allowed ranges: the agent's --allow-cidr would allow it"},
		{"127.0.0.1:10250", "127.0.0.1 is a loopback address, refused unless named explicitly: by the agent's --node-ip, or an --allow-cidr within 127.0.0.0/8"},
		{"[64:ff9b::a9fe:a9fe]:10250", "64:ff9b::a9fe:a9fe carries 169.254.169.254, which is a link-local or metadata address, refused unless named explicitly: " +
			"by the agent's --node-ip, or an --allow-cidr within 169.254.0.0/16"},
	} {
		ap := netip.MustParseAddrPort(c.addr)
		if err := p.check(ap.Addr(), ap.Port()); err == nil || err.Error() != c.want {
			t.Errorf("check(%s) = %v, want %q", c.addr, err, c.want)
		}
	}
}
