// Package cache is a bounded map for decoded, immutable objects, sharded
// so that concurrent readers rarely meet on a lock. A full shard drops an
// arbitrary entry (Go's map order is random): cheaper than keeping LRU
// order on every hit, which showed in profiles of many parallel streams.
package cache

import (
	"hash/maphash"
	"sync"
)

const shards = 32

// Map is a bounded concurrent map.
type Map[K comparable, V any] struct {
	seed   maphash.Seed
	max    int // per shard
	shards [shards]shard[K, V]
}

type shard[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]V
}

// New returns a Map holding about max entries.
func New[K comparable, V any](max int) *Map[K, V] {
	c := &Map[K, V]{seed: maphash.MakeSeed(), max: max/shards + 1}
	for i := range c.shards {
		c.shards[i].m = make(map[K]V)
	}
	return c
}

func (c *Map[K, V]) shard(k K) *shard[K, V] {
	return &c.shards[maphash.Comparable(c.seed, k)%shards]
}

// Get returns the value for k.
func (c *Map[K, V]) Get(k K) (V, bool) {
	s := c.shard(k)
	s.mu.RLock()
	v, ok := s.m[k]
	s.mu.RUnlock()
	return v, ok
}

// Put sets the value for k, evicting another entry if the shard is full.
func (c *Map[K, V]) Put(k K, v V) {
	s := c.shard(k)
	s.mu.Lock()
	if _, ok := s.m[k]; !ok && len(s.m) >= c.max {
		for old := range s.m {
			delete(s.m, old)
			break
		}
	}
	s.m[k] = v
	s.mu.Unlock()
}

// Delete removes k.
func (c *Map[K, V]) Delete(k K) {
	s := c.shard(k)
	s.mu.Lock()
	delete(s.m, k)
	s.mu.Unlock()
}

// Purge removes everything.
func (c *Map[K, V]) Purge() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.m = make(map[K]V)
		s.mu.Unlock()
	}
}
