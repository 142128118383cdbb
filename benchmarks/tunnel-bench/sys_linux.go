package main

import "syscall"

// childAttr makes a child die with the tool, so an interrupted run leaves
// no tunnel-server, tunnel-agent or target behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
