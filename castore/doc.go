// Package castore is the content-addressed Merkle store every node keeps:
// chunks, blobs and directories, each named by its BLAKE3-256 digest, in an
// embedded store on disk. It knows nothing of Nix.
//
// Objects. A chunk is up to 256 KiB of file content. A blob is a file's
// content, named by the BLAKE3 of all of it (as in snix, so chunking never
// changes a file's address) and stored as its ordered chunk list. A
// directory is snix castore's Directory protobuf (same field numbers,
// byte-wise sorted names, proto3 defaults omitted), named by the BLAKE3 of
// that canonical encoding; Size counts the entries below it (see
// Directory.Size for the rule and the test vectors that pin it).
//
// Chunking. FastCDC with a gear hash and normalised cuts: 16 KiB minimum,
// 64 KiB average, 256 KiB maximum. The average trades dedup against the
// number of keys announced on the DHT: on the Go toolchain corpus, go1.25.1
// after go1.25.0 stores 30% of its NAR size as new chunks at 64 KiB (whole
// files alone would leave 37.5%; 16 KiB chunks 28%, at four times the
// keys). snix chunks at 256 KiB on average. The gear table comes from a
// fixed seed, so every node cuts the same way.
//
// Layout. dir/index.db is a bbolt file with the chunk index (digest ->
// pack, offset, length), multi-chunk blob lists, directories, each
// pack's committed length, and counters of the objects and chunk bytes
// that commits and collections keep (Stats reads them, never walking a
// bucket: status and metrics ask often; a store without them is counted
// once on opening). dir/packs/*.pack hold raw chunk bytes back to
// back, 1 GiB per pack. Raw, not compressed: a NAR is then a splice of pack
// ranges that sendfile puts on a socket, as nginx serves a file, and ingest
// does not pay for compression (zstd at its fastest runs at a third of the
// speed of chunking and hashing here). A chunk that came from a peer as a
// zstd frame is kept as that frame only, in the zstd packs (zstd.go), and
// its index entry says so: writing it raw as well would cost a fetch more
// CPU than anything but decoding, and the disk about three times the
// frame's size again; reads decode it (about 1 GB/s), and a NAR rendered
// while the fetch runs takes the chunks the fetch has just decoded.
//
// Crash safety. A Writer appends chunk bytes to the current pack as they
// come and keeps their index entries in memory. Commit fsyncs the packs,
// then writes all entries and the packs' new lengths in one bbolt
// transaction. So the index never names a byte that is not durable; a crash
// before the commit leaves bytes past a pack's committed length, which Open
// cuts off, and a crash after it leaves at worst objects no path uses,
// which gc removes. Readers see only committed objects. A write that fails
// (a full disk) cuts its pack back and seals it (pack.go), so offsets and
// bytes never disagree; an aborted Writer's bytes are cut off when they end
// their pack, and are garbage otherwise.
//
// Damage. Serving trusts the disk, as nginx does (a NAR is a splice of
// pack ranges, hashed by nobody on the way); bytes read into memory anyway
// (ReadChunk, for peers and the compressor) are checked against their
// digests, and VerifyObjects checks everything, streaming over the index.
// What fails is a Damage, which DropDamaged takes out of the index: then
// nothing reads it, and a fetch or an import stores it anew (damage.go).
//
// Garbage. Collect (gc.go) removes what no path's tree uses and rewrites
// packs that are mostly garbage; whoever builds a path holds its objects
// with a Lease (lease.go) until the path is recorded, so a collection never
// takes what a path being built relies on. The files are the node user's
// alone (0600, directories 0700): they hold private paths.
package castore
