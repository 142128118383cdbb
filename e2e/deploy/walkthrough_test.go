package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's loopback walkthrough lies between these two HTML comments.
// Inside, every ```sh block is a step and every ```text block is output the
// steps must print.
const (
	walkthroughBegin = "<!-- walkthrough:"
	walkthroughEnd   = "<!-- end of walkthrough -->"
)

// walkthroughTimeout bounds the whole walkthrough: a `make build` with a
// warm cache, then processes that register within seconds.
const walkthroughTimeout = 5 * time.Minute

// walkthroughTools are what the walkthrough's commands need besides Go.
var walkthroughTools = []string{"bash", "make", "curl", "openssl"}

// walkthrough is the runnable part of a README section.
type walkthrough struct {
	steps  []string // the sh blocks, in order
	output []string // the text blocks: each must appear in what the steps print
}

// parseWalkthrough returns the sh and text blocks between the markers of md.
func parseWalkthrough(md string) (walkthrough, error) {
	var w walkthrough
	_, rest, ok := strings.Cut(md, walkthroughBegin)
	if !ok {
		return w, fmt.Errorf("no %q marker", walkthroughBegin)
	}
	section, _, ok := strings.Cut(rest, walkthroughEnd)
	if !ok {
		return w, fmt.Errorf("no %q marker after %q", walkthroughEnd, walkthroughBegin)
	}
	var block *[]string // where the open fence's lines go; nil outside a fence
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(section))
	for sc.Scan() {
		line := sc.Text()
		fence, isFence := strings.CutPrefix(strings.TrimSpace(line), "```")
		switch {
		case isFence && block == nil:
			block, lines = fenceTarget(&w, fence), nil
		case isFence:
			*block = append(*block, strings.Join(lines, "\n"))
			block = nil
		case block != nil:
			lines = append(lines, line)
		}
	}
	if block != nil {
		return w, errors.New("a code block is not closed before the end marker")
	}
	if len(w.steps) == 0 {
		return w, errors.New("no sh blocks between the markers")
	}
	return w, nil
}

// fenceTarget returns where a block opened with the given info string goes:
// steps for sh, output for text, and a discarded slice for anything else.
func fenceTarget(w *walkthrough, info string) *[]string {
	switch strings.TrimSpace(info) {
	case "sh", "bash", "shell":
		return &w.steps
	case "text":
		return &w.output
	}
	return new([]string)
}

func TestParseWalkthrough(t *testing.T) {
	md := "intro\n```sh\nnot this\n```\n" + walkthroughBegin + " note -->\n\n```sh\necho a \\\n  b\n```\n" +
		"prose\n```text\na b\n```\n```yaml\nx: 1\n```\n  ```sh\n  kill $(jobs -p)\n  ```\n" + walkthroughEnd + "\n```sh\nafter\n```\n"
	w, err := parseWalkthrough(md)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprintf("%q", w.steps), `["echo a \\\n  b" "  kill $(jobs -p)"]`; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
	if got, want := fmt.Sprintf("%q", w.output), `["a b"]`; got != want {
		t.Errorf("output %s, want %s", got, want)
	}
	for _, bad := range []string{
		"no markers",
		walkthroughBegin + " -->\n```sh\nx\n",
		walkthroughBegin + " -->\n```sh\nx\n" + walkthroughEnd,
		walkthroughBegin + " -->\n```text\nx\n```\n" + walkthroughEnd,
	} {
		if _, err := parseWalkthrough(bad); err == nil {
			t.Errorf("parseWalkthrough(%q) succeeded", bad)
		}
	}
}

// TestReadmeWalkthrough runs the README's "Running it on loopback" as a
// reader would paste it: every sh block, in order, in one bash, in a copy
// of the repository, and requires every text block in the output. So the
// walkthrough cannot rot: a renamed flag, a changed output line or a step
// that no longer works fails here.
func TestReadmeWalkthrough(t *testing.T) {
	for _, tool := range walkthroughTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian package %s; .ci/run installs it): the README's walkthrough was not run", tool, tool)
		}
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := parseWalkthrough(string(readme))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	repo := filepath.Join(t.TempDir(), "repo")
	if err := copySource(root, repo); err != nil {
		t.Fatal(err)
	}
	scratch, err := os.MkdirTemp("", "walkthrough-") // short: the steps' mktemp -d lands here
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(scratch) })
	out, err := runWalkthrough(t, w, repo, scratch)
	if err != nil {
		t.Fatalf("the walkthrough failed: %v\noutput:\n%s%s", err, out, walkthroughLogs(scratch))
	}
	for _, want := range w.output {
		if !strings.Contains(out, want) {
			t.Errorf("the walkthrough's output lacks the README's\n%s\noutput:\n%s%s", want, out, walkthroughLogs(scratch))
		}
	}
}

// runWalkthrough runs w's steps in one bash in dir, with TMPDIR at tmp, and
// returns what they printed. Everything the steps leave running (their
// background processes share bash's process group) is killed when the test
// ends.
func runWalkthrough(t *testing.T, w walkthrough, dir, tmp string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), walkthroughTimeout)
	defer cancel()
	script := "set -euo pipefail\n" + strings.Join(w.steps, "\n") + "\n"
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = walkthroughEnv(tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	err := cmd.Wait()
	if ctx.Err() != nil {
		err = fmt.Errorf("not done within %s: %w", walkthroughTimeout, err)
	}
	return out.String(), err
}

// walkthroughEnv is the test's environment with TMPDIR set to tmp, and
// without the variables of a make that runs this test, which would make the
// walkthrough's own `make build` a sub-make of it.
func walkthroughEnv(tmp string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "TMPDIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "TMPDIR="+tmp)
}

// walkthroughLogs returns the logs the steps wrote (server.log and the
// like, in the directory mktemp -d made under tmp), for a failure message.
func walkthroughLogs(tmp string) string {
	paths, _ := filepath.Glob(filepath.Join(tmp, "*", "*.log"))
	var b strings.Builder
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "\n--- %s:\n%s", filepath.Base(p), data)
	}
	return b.String()
}

// skipInCopy are the top-level directories copySource leaves out: version
// control, build output, and the modules of their own that `make build`
// does not need.
var skipInCopy = map[string]bool{".git": true, "bin": true, "build": true, "e2e": true}

// copySource copies the main module's tree under src to dst: regular files
// with their modes, no symlinks, none of skipInCopy.
func copySource(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		switch {
		case d.IsDir() && skipInCopy[rel]:
			return filepath.SkipDir
		case d.IsDir():
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		case !d.Type().IsRegular():
			return nil
		}
		return copyFile(path, filepath.Join(dst, rel))
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
