package cli

import (
	"errors"
	"testing"
	"time"
)

func TestFlagGroupsUsage(t *testing.T) {
	g := NewFlagGroups("prog")
	a := g.Group("Alpha")
	b := g.Group("Beta")
	var n int64 = 1 << 30
	b.String("zeta", "z", "a string")
	a.Bool("off", false, "a boolean, false by default")
	a.BoolP("on", "o", true, "a boolean, true by default")
	a.String("empty", "", "a string without a default")
	a.Duration("wait", 10*time.Second, "a duration")
	a.Duration("never", 0, "a zero duration")
	a.StringSlice("list", nil, "a list")
	a.Int("count", 0, "an int at zero")
	a.Var(ByteSize{N: &n}, "size", "a size")
	g.Group("Empty") // no flags: no heading
	want := `
Alpha flags:
      --off              a boolean, false by default
  -o, --on               a boolean, true by default (default true)
      --empty string     a string without a default
      --wait duration    a duration (default 10s)
      --never duration   a zero duration
      --list strings     a list
      --count int        an int at zero
      --size bytes       a size (default 1Gi)

Beta flags:
      --zeta string   a string (default "z")
`
	if got := g.Usage(); got != want {
		t.Errorf("Usage():\n%s\nwant:\n%s", got, want)
	}
	fs := g.Set()
	if err := Parse(fs, []string{"--zeta=y", "--off", "-o=false", "--size", "2Mi"}); err != nil {
		t.Fatal(err)
	}
	if !fs.Changed("zeta") || !fs.Changed("on") || n != 2<<20 {
		t.Errorf("the merged set did not parse into the groups' flags: zeta %v, on %v, size %d", fs.Changed("zeta"), fs.Changed("on"), n)
	}
}

func TestFlagGroupsRefuseTwoGroups(t *testing.T) {
	g := NewFlagGroups("prog")
	g.Group("A").String("x", "", "")
	g.Group("B").String("x", "", "")
	defer func() {
		if recover() == nil {
			t.Error("a flag in two groups did not panic")
		}
	}()
	g.Set()
}

func TestMessage(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errors.New("certs: private key k: no such file or directory"), "private key k: no such file or directory"},
		{errors.New("tunnel: another process is listening on /s"), "another process is listening on /s"},
		{errors.New("plain"), "plain"},
		{Blame("out", errors.New("certs: x: file already exists")), "--out: x: file already exists"},
	} {
		if got := Message(tc.err); got != tc.want {
			t.Errorf("Message(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
