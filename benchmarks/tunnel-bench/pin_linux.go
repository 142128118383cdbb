package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// Pinning moves every thread of a running process to one CPU with
// sched_setaffinity, as taskset -a -p does. A thread the process starts
// later inherits the mask of the thread that starts it, so once every
// thread is pinned the process stays pinned.

// cpuMask is an affinity mask of up to maxPinCPU CPUs, glibc's cpu_set_t.
type cpuMask [maxPinCPU / 64]uint64

// pinThreadRounds bounds how often pin lists a process's threads again
// for ones started while it was pinning the others.
const pinThreadRounds = 10

func schedGetaffinity(tid int) (cpuMask, error) {
	var m cpuMask
	_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_GETAFFINITY, uintptr(tid), unsafe.Sizeof(m), uintptr(unsafe.Pointer(&m)))
	if e != 0 {
		return m, e
	}
	return m, nil
}

func schedSetaffinity(tid int, m *cpuMask) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(*m), uintptr(unsafe.Pointer(m)))
	if e != 0 {
		return e
	}
	return nil
}

// pinnedProc is a process moved to one CPU and the mask it had before.
type pinnedProc struct {
	proc
	was cpuMask
}

// pinning is a set of pinned processes; undo gives them their masks back.
type pinning struct{ procs []pinnedProc }

// pinAll moves every thread of every process in ps to cpu. On an error it
// undoes what it did.
func pinAll(ps []proc, cpu int) (*pinning, error) {
	var one cpuMask
	one[cpu/64] = 1 << (cpu % 64)
	p := &pinning{}
	for _, pr := range ps {
		was, err := schedGetaffinity(pr.pid)
		if err == nil {
			err = setThreads(pr.pid, &one)
		}
		if err != nil {
			p.undo()
			return nil, fmt.Errorf("pinning the %s (pid %d) to CPU %d: %w", pr.name, pr.pid, cpu, err)
		}
		p.procs = append(p.procs, pinnedProc{pr, was})
	}
	return p, nil
}

// undo gives every pinned process, all its threads, the mask its main
// thread had before.
func (p *pinning) undo() error {
	var errs []error
	for _, pr := range p.procs {
		if err := setThreads(pr.pid, &pr.was); err != nil {
			errs = append(errs, fmt.Errorf("unpinning the %s (pid %d): %w", pr.name, pr.pid, err))
		}
	}
	return errors.Join(errs...)
}

// setThreads sets the mask of every thread of pid, listing the threads
// again until no new one appears.
func setThreads(pid int, m *cpuMask) error {
	done := make(map[int]bool)
	for range pinThreadRounds {
		tids, err := threads(pid)
		if err != nil {
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			fresh++
			// A thread that exits meanwhile is no error.
			if err := schedSetaffinity(tid, m); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("thread %d: %w", tid, err)
			}
			done[tid] = true
		}
		if fresh == 0 {
			return nil
		}
	}
	return nil
}

// threads lists the thread IDs of pid.
func threads(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
