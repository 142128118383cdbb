package deploy

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// docGlobs are the documentation files whose links are checked, relative to
// the repository root; docDirs are walked for *.md files as well.
var (
	docGlobs = []string{"README.md", "docs/*.md", "tunnel/PROTOCOL.md", "tunnel/mux/spec.md",
		"e2e/README.md", "deploy/README.md"}
	docDirs = []string{"benchmarks"}
)

// docFiles returns every documentation file, relative to the root, sorted.
func docFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, g := range docGlobs {
		m, err := filepath.Glob(filepath.Join(root, g))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	for _, d := range docDirs {
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() && strings.HasSuffix(p, ".md") {
				files = append(files, p)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range files {
		files[i], _ = filepath.Rel(root, f)
	}
	slices.Sort(files)
	files = slices.Compact(files)
	if !slices.Contains(files, "README.md") || !slices.Contains(files, filepath.Join("docs", "operating.md")) {
		t.Fatalf("documentation files %q lack README.md or docs/operating.md", files)
	}
	return files
}

// mdLinkRE matches an inline link's target: ](target) or ](target "title").
var mdLinkRE = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// mdHeadingRE matches an ATX heading and captures its text.
var mdHeadingRE = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)

// proseLines returns md's lines outside fenced code blocks, with inline code
// spans emptied (a link target in backticks is not a link), each with its
// line number.
func proseLines(md string) (lines []string, numbers []int) {
	fenced := false
	sc := bufio.NewScanner(strings.NewReader(md))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			lines, numbers = append(lines, line), append(numbers, n)
		}
	}
	return lines, numbers
}

// codeSpanRE matches an inline code span.
var codeSpanRE = regexp.MustCompile("`[^`]*`")

// mdLinks returns the link targets in md outside code, with their lines.
func mdLinks(md string) (targets []string, lines []int) {
	prose, numbers := proseLines(md)
	for i, line := range prose {
		// Empty code spans but keep the brackets of a link around one:
		// [`x`](y) stays a link, `[a](b)` is not one.
		line = codeSpanRE.ReplaceAllString(line, "``")
		for _, m := range mdLinkRE.FindAllStringSubmatch(line, -1) {
			targets, lines = append(targets, m[1]), append(lines, numbers[i])
		}
	}
	return targets, lines
}

// headingAnchors returns the anchors GitHub gives md's headings: the text
// lower-cased, without markup, punctuation removed, spaces as hyphens, and
// -1, -2 … after repeats.
func headingAnchors(md string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	prose, _ := proseLines(md)
	for _, line := range prose {
		m := mdHeadingRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		slug := slugify(m[1])
		if n := seen[slug]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			anchors[slug] = true
		}
		seen[slug]++
	}
	return anchors
}

// mdInlineLinkRE matches a whole inline link, to keep only its text.
var mdInlineLinkRE = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)

func slugify(heading string) string {
	heading = mdInlineLinkRE.ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestSlugify(t *testing.T) {
	for _, tc := range []struct{ heading, want string }{
		{"Running it on loopback", "running-it-on-loopback"},
		{"The agent's destination policy", "the-agents-destination-policy"},
		{"SSH (tunnel-server)", "ssh-tunnel-server"},
		{"High availability, 2026-11-23", "high-availability-2026-11-23"},
		{"Hello (0x01)", "hello-0x01"},
		{"`tunnel-bench`: [the tool](x.md)", "tunnel-bench-the-tool"},
		{"Tunnels end, or agents come and go", "tunnels-end-or-agents-come-and-go"},
	} {
		if got := slugify(tc.heading); got != tc.want {
			t.Errorf("slugify(%q) = %q, want %q", tc.heading, got, tc.want)
		}
	}
	anchors := headingAnchors("# A\n```\n# not a heading\n```\n## A\n### B ###\n")
	want := map[string]bool{"a": true, "a-1": true, "b": true}
	if fmt.Sprint(anchors) != fmt.Sprint(want) {
		t.Errorf("headingAnchors = %v, want %v", anchors, want)
	}
}

// TestDocLinks requires every relative link in the documentation to name a
// file or directory of the repository, and every #anchor into a markdown
// file (or within one) to name one of its headings.
func TestDocLinks(t *testing.T) {
	anchorsOf := map[string]map[string]bool{} // absolute path → anchors
	anchors := func(path string) (map[string]bool, error) {
		if a, ok := anchorsOf[path]; ok {
			return a, nil
		}
		md, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		anchorsOf[path] = headingAnchors(string(md))
		return anchorsOf[path], nil
	}
	checked := 0
	for _, rel := range docFiles(t) {
		md, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		targets, lines := mdLinks(string(md))
		for i, target := range targets {
			if err := checkLink(rel, target, anchors); err != nil {
				t.Errorf("%s:%d: link %s: %v", rel, lines[i], target, err)
			}
			checked++
		}
	}
	if checked < 20 {
		t.Fatalf("checked only %d links; is the link syntax still matched?", checked)
	}
}

// checkLink checks one link target found in the file rel.
func checkLink(rel, target string, anchors func(string) (map[string]bool, error)) error {
	if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
		return nil
	}
	file, frag, _ := strings.Cut(target, "#")
	path := filepath.Join(root, rel)
	if file != "" {
		path = filepath.Join(filepath.Dir(path), filepath.FromSlash(file))
		if r, err := filepath.Rel(root, path); err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
			return fmt.Errorf("points outside the repository")
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("no such file in the repository")
		}
	}
	if frag == "" || !strings.HasSuffix(path, ".md") {
		return nil
	}
	a, err := anchors(path)
	if err != nil {
		return err
	}
	if !a[frag] {
		return fmt.Errorf("%s has no heading for #%s", filepath.Base(path), frag)
	}
	return nil
}

// issueRE matches a tracker reference: "issue 3", "Issue #12".
var issueRE = regexp.MustCompile(`(?i)\bissues?\s+#?\d+`)

// TestDocsNameNoIssues keeps tracker numbers out of the documentation: it
// describes the project as it is, not the work items that made it.
func TestDocsNameNoIssues(t *testing.T) {
	for _, rel := range docFiles(t) {
		md, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range strings.Split(string(md), "\n") {
			if m := issueRE.FindString(line); m != "" {
				t.Errorf("%s:%d: %q: say what the thing is, not which issue asked for it", rel, n+1, m)
			}
		}
	}
}
