package cli

import "testing"

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"1073741824": 1 << 30, "1Gi": 1 << 30, "1GiB": 1 << 30, "512Mi": 512 << 20, "256KiB": 256 << 10, "0": 0} {
		var n int64
		if err := (ByteSize{&n}).Set(in); err != nil || n != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, n, err, want)
		}
	}
	for _, in := range []string{"", "1G", "-1", "1.5Gi", "lots", "9999999Ti"} {
		var n int64
		if err := (ByteSize{&n}).Set(in); err == nil {
			t.Errorf("Set(%q) = %d, want an error", in, n)
		}
	}
	n := int64(1 << 30)
	if s := (ByteSize{&n}).String(); s != "1Gi" {
		t.Errorf("String() = %q, want 1Gi", s)
	}
}
