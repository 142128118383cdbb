package tunnel

import (
	"slices"
	"strings"
	"testing"
)

// TestLimitFlagsNameEveryLimit: every limit label has the flag that sets
// it, for refusals to name.
func TestLimitFlagsNameEveryLimit(t *testing.T) {
	for _, l := range limitNames {
		if f := limitFlags[l]; !strings.HasPrefix(f, "--") {
			t.Errorf("limit %s: flag %q", l, f)
		}
	}
	for l := range limitFlags {
		if !slices.Contains(limitNames, l) {
			t.Errorf("limitFlags names %s, which is not a limit label", l)
		}
	}
}
