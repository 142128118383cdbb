// Command tunnel-dist packs binaries that `make` has built into what is
// shipped: a container image (`make image`) and release archives (`make
// release`). It is its own module so that the product's go.mod does not
// carry go-containerregistry, and the binaries never link it.
//
// Everything it writes is reproducible: entries in a fixed order, owned by
// root, every timestamp the --epoch given (SOURCE_DATE_EPOCH, the last
// commit's time), gzip without a name or time in its header. Built from the
// same commit with the same toolchain, the image has the same digest and
// the archives the same checksums.
//
//	tunnel-dist image   --bin-dir DIR --ref NAME:TAG --arch ARCH --version V --revision C --epoch N --oci DIR --tarball FILE
//	tunnel-dist release --dist-dir DIR --platform OS/ARCH ... --version V --epoch N --doc FILE ... --out DIR
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

const prog = "tunnel-dist"

// binaries are the programs every image and archive ships, as `make`
// builds them into a directory.
var binaries = []string{"tunnel-server", "tunnel-agent"}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintf(os.Stderr, "usage: %s image|release [flags]\n", prog)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "image":
		err = runImage(args)
	case "release":
		err = runRelease(args)
	default:
		err = fmt.Errorf("unknown command %q (want image or release)", cmd)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		os.Exit(1)
	}
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// epochFlag is SOURCE_DATE_EPOCH: whole seconds since 1970, UTC.
type epochFlag struct{ t time.Time }

func (e *epochFlag) String() string { return fmt.Sprint(e.t.Unix()) }

func (e *epochFlag) Set(v string) error {
	var sec int64
	if _, err := fmt.Sscan(v, &sec); err != nil || sec < 0 || fmt.Sprint(sec) != v {
		return fmt.Errorf("%q is not a count of seconds since 1970", v)
	}
	e.t = time.Unix(sec, 0).UTC()
	return nil
}

// required returns an error naming the first flag left empty, given as
// name, value pairs.
func required(pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i+1] == "" {
			return fmt.Errorf("--%s is required", pairs[i])
		}
	}
	return nil
}
