package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// rssKiB returns the resident set size of pid in KiB (VmRSS).
func rssKiB(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading memory of pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: bad VmRSS %q", pid, v)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in /proc/%d/status", pid, pid)
}

// cpuSeconds returns the user plus system CPU time pid has used.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading CPU time of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; fields after its ')' are
	// plain. utime and stime are fields 14 and 15, so 11 and 12 after it.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short /proc/%d/stat", pid, pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pid %d: bad utime/stime %q %q", pid, f[11], f[12])
	}
	return (ut + st) / clockTicks, nil
}

// raiseNoFile lifts the soft limit on open files to the hard limit for
// this process and every child it starts later. The Go runtime already
// raises its own soft limit at start-up but gives children the original
// one back; an explicit Setrlimit, made even when the limit looks raised,
// makes the children inherit the high limit. It returns the limit now in
// force.
func raiseNoFile() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return lim.Cur
}

// machine describes where a run happened, for the JSON report.
type machine struct {
	NumCPU    int     `json:"nproc"`
	CPUModel  string  `json:"cpuModel"`
	MemoryGiB float64 `json:"memoryGiB"`
	Kernel    string  `json:"kernel"`
	OSArch    string  `json:"osArch"`
	GoVersion string  `json:"goVersion"`
	Commit    string  `json:"commit,omitempty"`
	Dirty     bool    `json:"dirty,omitempty"` // uncommitted changes in the work tree
	Hostname  string  `json:"hostname"`
}

func describeMachine(ctx context.Context, moduleDir string) machine {
	m := machine{
		NumCPU:    runtime.NumCPU(),
		CPUModel:  procField("/proc/cpuinfo", "model name"),
		Kernel:    strings.TrimSpace(readString("/proc/sys/kernel/osrelease")),
		OSArch:    runtime.GOOS + "/" + runtime.GOARCH,
		GoVersion: runtime.Version(),
	}
	m.Hostname, _ = os.Hostname()
	if kb, err := strconv.ParseFloat(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB"), 64); err == nil {
		m.MemoryGiB = float64(int(kb/(1<<20)*10)) / 10
	}
	if moduleDir != "" {
		m.Commit = gitOutput(ctx, moduleDir, "rev-parse", "HEAD")
		m.Dirty = m.Commit != "" && gitOutput(ctx, moduleDir, "status", "--porcelain", "--untracked-files=no") != ""
	}
	return m
}

// procField returns the value of the first "key: value" line of file.
func procField(file, key string) string {
	for line := range strings.SplitSeq(readString(file), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func readString(file string) string {
	b, _ := os.ReadFile(file)
	return string(b)
}

// gitOutput runs git in dir (bounded) and returns its trimmed output, or ""
// if git is missing or fails.
func gitOutput(ctx context.Context, dir string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
