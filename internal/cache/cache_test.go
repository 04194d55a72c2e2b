package cache

import "testing"

func TestBounded(t *testing.T) {
	c := New[int, int](64)
	for i := 0; i < 10000; i++ {
		c.Put(i, i*2)
		if v, ok := c.Get(i); !ok || v != i*2 {
			t.Fatalf("%d: %v %v", i, v, ok)
		}
	}
	n := 0
	for i := range c.shards {
		n += len(c.shards[i].m)
	}
	if n > 64+shards {
		t.Fatalf("%d entries kept, bound is about 64", n)
	}
	c.Delete(9999)
	if _, ok := c.Get(9999); ok {
		t.Fatal("deleted entry still there")
	}
	c.Purge()
	if _, ok := c.Get(9998); ok {
		t.Fatal("purged entry still there")
	}
}
