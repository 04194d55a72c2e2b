package fetch

import (
	"runtime"
	"syscall"
)

// lowerPriority runs the calling goroutine on an OS thread of its own at
// the lowest CPU priority (nice 19: on Linux a thread's own) until the
// goroutine returns; the thread then ends with it, so nothing else ever
// runs at that priority. Linux derives a thread's disk priority from it
// too, so its fsyncs also come last on a busy disk; whatever waits on a
// lock it holds (the index's write lock, for an import or another fetch)
// may then wait longer.
func lowerPriority() {
	runtime.LockOSThread()
	syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), 19)
}

// atLowPriority runs fn on a thread of its own at the lowest CPU priority
// and waits for it.
func atLowPriority(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		lowerPriority()
		fn()
	}()
	<-done
}
