package castore

import "sync"

// Leases. A path is put together from objects that are new and objects the
// store has already (dedup), and only the path index, written last, makes
// them reachable from a root. Until then the garbage collector must not
// take them: like Nix's temporary GC roots, whoever builds a path holds a
// Lease on every object it adds or relies on, before it asks whether the
// store has it, and releases the lease once the path is recorded (or given
// up). A collection keeps whatever a lease held when it began and whatever
// is held while it runs.

// Lease keeps the objects it holds from the garbage collector until it is
// released. Safe for concurrent use.
type Lease struct {
	s        *Store
	held     map[Digest]struct{} // guarded by s.leaseMu
	released bool
}

// NewLease starts a lease; Release it when the objects it holds are
// reachable from a root (or no longer needed).
func (s *Store) NewLease() *Lease {
	l := &Lease{s: s, held: map[Digest]struct{}{}}
	s.leaseMu.Lock()
	s.leases[l] = struct{}{}
	s.leaseMu.Unlock()
	return l
}

// Hold keeps the objects ds (chunks, blobs, directories) from the garbage
// collector while the lease lasts.
func (l *Lease) Hold(ds ...Digest) {
	s := l.s
	s.leaseMu.Lock()
	for _, d := range ds {
		l.held[d] = struct{}{}
		if s.touched != nil {
			s.touched[d] = struct{}{}
		}
	}
	s.leaseMu.Unlock()
}

// Release ends the lease.
func (l *Lease) Release() {
	s := l.s
	s.leaseMu.Lock()
	delete(s.leases, l)
	l.held, l.released = nil, true
	s.leaseMu.Unlock()
}

// NewWriter returns a Writer whose additions, and the stored objects it
// dedups against, the lease holds: committing it does not end the lease.
func (l *Lease) NewWriter() *Writer {
	w := l.s.newWriter()
	w.lease = l
	return w
}

// Missing holds the chunks ds and returns those the store lacks, in the
// order given: what a fetch must download.
func (l *Lease) Missing(ds []Digest) []Digest {
	l.Hold(ds...)
	var out []Digest
	l.s.checkExisting(func(v *View) {
		chunks := v.bucket(bucketChunks, &v.chunks)
		for _, d := range ds {
			if chunks.Get(d[:]) == nil {
				out = append(out, d)
			}
		}
	})
	return out
}

// checkExisting runs fn, which asks the index what exists, so that no
// collection removes objects between its questions and the commit of what
// its caller then adds: the caller holds (Lease.Hold) the objects it asks
// about before it asks. The answers come from the index, never from the
// caches, which may lag behind a collection.
func (s *Store) checkExisting(fn func(v *View)) {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	_ = s.View(func(v *View) error { fn(v); return nil })
}

// leaseState is the part of a Store that tracks leases.
type leaseState struct {
	// gcMu is taken for reading by existence checks (checkExisting) and
	// for writing by a collection's sweep, so that no check straddles it.
	gcMu sync.RWMutex

	leaseMu sync.Mutex
	leases  map[*Lease]struct{}
	// touched is non-nil while a collection runs: everything any lease
	// held when it began, and everything held since.
	touched map[Digest]struct{}
}
