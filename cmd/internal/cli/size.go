package cli

import (
	"fmt"
	"strconv"
	"strings"
)

// ByteSize is a pflag.Value for a size in bytes: a number, optionally with
// a binary unit (Ki, Mi, Gi, Ti, with or without a trailing B).
type ByteSize struct{ N *int64 }

var units = []struct {
	suffix string
	shift  uint
}{{"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"Ti", 40}}

// String prints the size with the largest unit that divides it.
func (b ByteSize) String() string {
	if b.N == nil {
		return "0"
	}
	for i := len(units) - 1; i >= 0; i-- {
		if u := units[i]; *b.N != 0 && *b.N%(1<<u.shift) == 0 {
			return strconv.FormatInt(*b.N>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(*b.N, 10)
}

// Set parses "1073741824", "1Gi" or "1GiB".
func (b ByteSize) Set(s string) error {
	num, shift := strings.TrimSuffix(s, "B"), uint(0)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, shift = strings.TrimSuffix(num, u.suffix), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return fmt.Errorf("%q is not a size in bytes (like 1073741824, 512Mi or 1GiB)", s)
	}
	*b.N = n << shift
	return nil
}

// Type names the value in usage text.
func (ByteSize) Type() string { return "bytes" }
