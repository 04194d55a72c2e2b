package castore

import "sync"

// cache is a bounded map from digests to decoded objects, sharded so that
// concurrent readers rarely meet on a lock. A full shard drops an
// arbitrary entry (Go's map order is random): cheaper than LRU upkeep on
// every hit, which showed in profiles of 16 streams. Objects are
// immutable, so a cached value is never stale while its object exists
// (gc, which removes objects, purges the caches).
type cache[V any] struct {
	shards [cacheShards]cacheShard[V]
	max    int // per shard
}

const cacheShards = 32

type cacheShard[V any] struct {
	mu sync.RWMutex
	m  map[Digest]V
}

func newCache[V any](max int) *cache[V] {
	c := &cache[V]{max: max/cacheShards + 1}
	for i := range c.shards {
		c.shards[i].m = make(map[Digest]V)
	}
	return c
}

func (c *cache[V]) shard(k Digest) *cacheShard[V] { return &c.shards[k[0]%cacheShards] }

func (c *cache[V]) get(k Digest) (V, bool) {
	s := c.shard(k)
	s.mu.RLock()
	v, ok := s.m[k]
	s.mu.RUnlock()
	return v, ok
}

func (c *cache[V]) put(k Digest, v V) {
	s := c.shard(k)
	s.mu.Lock()
	if len(s.m) >= c.max {
		for old := range s.m {
			delete(s.m, old)
			break
		}
	}
	s.m[k] = v
	s.mu.Unlock()
}

func (c *cache[V]) purge() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.m = make(map[Digest]V)
		s.mu.Unlock()
	}
}

// Cache sizes: about 20 MB when full. Serving a NAR looks up every
// directory, blob and chunk of its tree; without the caches each lookup is
// a bbolt transaction and a directory decode.
const (
	cacheDirs   = 16 << 10
	cacheBlobs  = 32 << 10
	cacheChunks = 128 << 10
)
