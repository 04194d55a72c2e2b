package castore

// Cache sizes: about 20 MB when full. Serving a NAR looks up every
// directory, blob and chunk of its tree; without the caches each lookup is
// a bbolt transaction and a directory decode. Objects are immutable, so a
// cached value is never stale while its object exists (gc, which removes
// objects, purges the caches).
const (
	cacheDirs   = 16 << 10
	cacheBlobs  = 32 << 10
	cacheChunks = 128 << 10
)
