package node

import (
	"math/bits"
	"sync"

	"github.com/p2pstore/p2pstore/castore"
)

// The handoff: chunks the download has just decoded, kept for the NARs
// being rendered from the job, which would otherwise decode them again
// from the frames the store keeps. Only while a render runs, and at most
// handoffLimit bytes: the first render to write a chunk takes it, and a
// chunk not here is read from the store. The buffers are recycled by size
// class, so that the 190 MB of a large path do not pass through the
// garbage collector.

// handoffLimit bounds the bytes held (the buffers' capacity). A render trails the download by
// about one commit, a few megabytes; one that falls further behind reads
// the rest from the store.
const handoffLimit = 32 << 20

// keep puts a copy of a chunk just decoded into the handoff, if a render
// that takes from it runs and there is room.
func (j *job) keep(d castore.Digest, data []byte) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.handoffRenders == 0 || j.handoffBytes+len(data) > handoffLimit || j.handoff[d] != nil {
		return
	}
	buf := getChunkBuf(len(data))
	copy(buf, data)
	j.handoff[d] = buf
	j.handoffBytes += cap(buf)
	j.cond.Broadcast() // a render may wait for it
}

// take removes a chunk from the handoff and returns it, or nil. The caller
// gives the buffer back with putChunkBuf.
func (j *job) take(d castore.Digest) []byte {
	j.mu.Lock()
	defer j.mu.Unlock()
	data := j.handoff[d]
	if data != nil {
		delete(j.handoff, d)
		j.handoffBytes -= cap(data)
	}
	return data
}

// dropHandoff empties the handoff; j.mu held.
func (j *job) dropHandoff() {
	for d, buf := range j.handoff {
		putChunkBuf(buf)
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
