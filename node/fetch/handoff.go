package fetch

import (
	"math/bits"
	"sync"

	"github.com/p2pstore/p2pstore/castore"
)

// The handoff: chunks the download has just decoded, kept for the NARs
// being rendered from the job, which would otherwise decode them again
// from the frames the store keeps. Only while a render runs, and at most
// handoffLimit bytes. A chunk stays until the renders have taken it as
// often as the NAR uses it (a file or a chunk can appear several times in
// a tree), and a chunk not here is read from the store once committed.
// The buffers are recycled by size class, so that the 190 MB of a large
// path do not pass through the garbage collector.

// handoffLimit bounds the bytes held (the buffers' capacity). A render
// that keeps up trails the download by a few megabytes; one that falls
// further behind reads the rest from the store.
const handoffLimit = 32 << 20

// handed is a chunk in the handoff.
type handed struct {
	buf   []byte
	left  int // uses in the NAR not taken yet; out of the handoff at 0
	users int // renders writing it now
}

// keep puts a chunk just decoded, in a buffer from getChunkBuf, into the
// handoff if a render that takes from it runs and there is room, and
// recycles the buffer otherwise.
func (j *Job) keep(d castore.Digest, buf []byte) {
	j.mu.Lock()
	defer j.mu.Unlock()
	// A second copy of a chunk (asked of two peers at the end, or in a
	// batch asked again) is not kept again once the renders took the first
	// as often as they use it: none would take it.
	c := j.narChunks[d]
	if j.handoffRenders == 0 || j.handoffBytes+cap(buf) > handoffLimit || j.handoff[d] != nil || c.spent {
		putChunkBuf(buf)
		return
	}
	j.handoff[d] = &handed{buf: buf, left: max(1, int(c.uses))}
	j.handoffBytes += cap(buf)
	j.cond.Broadcast() // a render may wait for it
}

// take takes one use of a chunk from the handoff, or returns nil. The
// caller gives it back with release once written.
func (j *Job) take(d castore.Digest) *handed {
	j.mu.Lock()
	defer j.mu.Unlock()
	h := j.handoff[d]
	if h == nil {
		return nil
	}
	h.users++
	if h.left--; h.left == 0 {
		delete(j.handoff, d)
		j.handoffBytes -= cap(h.buf)
		if c, ok := j.narChunks[d]; ok {
			c.spent = true
			j.narChunks[d] = c
		}
	}
	return h
}

// release ends a use of a chunk from take; nil is ignored.
func (j *Job) release(h *handed) {
	if h == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if h.users--; h.users == 0 && h.left == 0 {
		putChunkBuf(h.buf)
	}
}

// dropHandoff empties the handoff; j.mu held.
func (j *Job) dropHandoff() {
	for d, h := range j.handoff {
		if h.left = 0; h.users == 0 {
			putChunkBuf(h.buf)
		}
		delete(j.handoff, d)
	}
	j.handoffBytes = 0
}

// Size classes: powers of two from 1 KiB to castore.MaxChunkSize.
const (
	minChunkBufShift = 10
	maxChunkBufShift = 18
	// Both fail to compile unless castore.MaxChunkSize is 1<<maxChunkBufShift.
	_ = uint(castore.MaxChunkSize - 1<<maxChunkBufShift)
	_ = uint(1<<maxChunkBufShift - castore.MaxChunkSize)
)

var chunkBufs [maxChunkBufShift - minChunkBufShift + 1]sync.Pool

func chunkBufClass(n int) int {
	return max(bits.Len(uint(n-1)), minChunkBufShift) - minChunkBufShift
}

// getChunkBuf returns a buffer of n bytes, 0 < n <= castore.MaxChunkSize.
func getChunkBuf(n int) []byte {
	c := chunkBufClass(n)
	if b, ok := chunkBufs[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minChunkBufShift))
}

// chunkBuffers lends the download the handoff's buffers: a chunk is
// decoded into the buffer the handoff then keeps.
type chunkBuffers struct{}

func (chunkBuffers) Get(n int) []byte { return getChunkBuf(n) }
func (chunkBuffers) Put(b []byte)     { putChunkBuf(b) }

// putChunkBuf recycles a buffer from getChunkBuf; nil is ignored.
func putChunkBuf(b []byte) {
	if b == nil {
		return
	}
	c := chunkBufClass(cap(b))
	if cap(b) != 1<<(c+minChunkBufShift) {
		return // not one of ours
	}
	chunkBufs[c].Put(&b)
}
