// Package priority runs background work (a fetch's index writes, the zstd
// frames the compressor makes, the store's scrub) at the lowest CPU
// priority, and so the lowest disk priority, so that it never competes
// with what clients wait for.
package priority

import (
	"runtime"
	"syscall"
)

// Lower runs the calling goroutine on an OS thread of its own at
// the lowest CPU priority (nice 19: on Linux a thread's own) until the
// goroutine returns; the thread then ends with it, so nothing else ever
// runs at that priority. Linux derives a thread's disk priority from it
// too, so its fsyncs also come last on a busy disk; whatever waits on a
// lock it holds (the index's write lock, for an import or another fetch)
// may then wait longer.
func Lower() {
	runtime.LockOSThread()
	syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), 19)
}

// Run runs fn on a thread of its own at the lowest CPU priority
// and waits for it.
func Run(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		Lower()
		fn()
	}()
	<-done
}
