//go:build !linux

package main

import "syscall"

// childAttr: without a parent-death signal, children are stopped by the
// tool's own cleanup only.
func childAttr() *syscall.SysProcAttr { return nil }
