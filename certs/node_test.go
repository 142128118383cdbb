package certs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseNode(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	tests := []struct {
		in      string
		want    Node
		wantErr string
	}{
		{in: "worker-1", want: Node{Name: "worker-1"}},
		{in: "w1.example.com", want: Node{Name: "w1.example.com"}},
		{in: "0", want: Node{Name: "0"}},
		{in: "w1=10.0.0.5", want: Node{Name: "w1", IPs: addrs("10.0.0.5")}},
		{in: "w1=10.0.0.5,fd00::5", want: Node{Name: "w1", IPs: addrs("10.0.0.5", "fd00::5")}},
		{in: "w1=::ffff:10.0.0.5,10.0.0.5", want: Node{Name: "w1", IPs: addrs("10.0.0.5")}},
		{in: strings.Repeat("a", 63) + "." + strings.Repeat("b", 63), want: Node{Name: strings.Repeat("a", 63) + "." + strings.Repeat("b", 63)}},

		{in: "", wantErr: "empty node name"},
		{in: "=10.0.0.5", wantErr: "empty node name"},
		{in: "Worker-1", wantErr: "DNS-1123"},
		{in: "-w1", wantErr: "DNS-1123"},
		{in: "w1-", wantErr: "DNS-1123"},
		{in: "w1..example", wantErr: "DNS-1123"},
		{in: ".w1", wantErr: "DNS-1123"},
		{in: "../w1", wantErr: "DNS-1123"},
		{in: "w/1", wantErr: "DNS-1123"},
		{in: "w_1", wantErr: "DNS-1123"},
		{in: "w 1", wantErr: "DNS-1123"},
		{in: strings.Repeat("a.", 127), wantErr: "more than 253"},
		{in: "w1=", wantErr: "no IP after '='"},
		{in: "w1=10.0.0.5,", wantErr: "empty IP"},
		{in: "w1=,10.0.0.5", wantErr: "empty IP"},
		{in: "w1=10.0.0.256", wantErr: "bad IP"},
		{in: "w1=node-a", wantErr: "bad IP"},
		{in: "w1=10.0.0.0/24", wantErr: "bad IP"},
		{in: "w1=10.0.0.5 ", wantErr: "bad IP"},
		{in: "w1=fe80::1%eth0", wantErr: "zone"},
		{in: "w1=10.0.0.5=10.0.0.6", wantErr: "bad IP"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseNode(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), "certs: node ") || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseNode = %+v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseNode: %v", err)
			}
			if got.Name != tt.want.Name || !slices.Equal(got.IPs, tt.want.IPs) {
				t.Errorf("ParseNode = %+v, want %+v", got, tt.want)
			}
		})
	}
}
