//go:build !linux

package main

// pinning is a set of pinned processes: none without Linux.
type pinning struct{}

// pinAll cannot pin without sched_setaffinity.
func pinAll([]proc, int) (*pinning, error) { return nil, errPinUnsupported }

func (*pinning) undo() error { return nil }
