package node

import (
	"runtime"
	"syscall"
)

// lowerPriority runs the calling goroutine on an OS thread of its own at
// the lowest CPU priority (nice 19: on Linux a thread's own) until the
// goroutine returns; the thread then ends with it, so nothing else ever
// runs at that priority. Whatever waits on a lock it holds (the index's
// write lock, for an import or another fetch) may wait longer when the
// machine is busy.
func lowerPriority() {
	runtime.LockOSThread()
	syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), 19)
}
