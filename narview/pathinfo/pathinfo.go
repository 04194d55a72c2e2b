// Package pathinfo is the path index: for each valid store path, the root
// of its tree in castore and the metadata Nix keeps (NarHash, NarSize,
// references, deriver, signatures, CA), and for a Guix path its signed
// Guix narinfo.
//
// Nix and Guix paths share the index, keyed by hash part alone: the hash
// covers the store directory, so the two never collide in practice, and
// each reader checks the directory of the path it gets (a Nix listener
// answers 404 for a Guix path and the other way round).
//
// The index is its own bbolt file, keyed by the store path's hash part,
// with JSON values (a few hundred bytes each; readable with any bbolt tool).
// Putting a path's record is the commit point of an import: castore commits
// the tree first, so a record never points at missing objects, and a crash
// before the record leaves only unreferenced objects for gc.
//
// For the disk limit, the index also keeps when each path was last used
// (bucket "used": 8 bytes of unix nanoseconds, apart from the records so
// that the node's batches of use times rewrite no JSON; Put counts as a
// use) and how many records are pinned (Info.Pinned). Records written
// before the limit existed are pinned once, on opening (migratePins).
//
// Status and metrics read the index's totals often: the number of paths,
// the sum of their NAR sizes, the pinned ones and those of each Source are
// counters in the meta bucket that Put and Delete keep, never a walk of
// the records (an index written before them is counted once on opening).
//
// Invalid paths. A path whose stored contents proved damaged is made
// invalid (Invalidate): its record leaves bucket "paths", so that
// everything that reads the index (Get, Has, ForEach, Totals) no longer
// sees it and nothing serves it, and goes to bucket "invalid" with why
// and since when. There it keeps what the owner decided (pin, privacy)
// and its signatures for whoever makes it valid again: any Put of the
// path (a repair, a fetch, a pull, an import) takes it off that list.
package pathinfo

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/cache"
	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Info is what the node knows of one store path: the one type for a
// path's metadata, with one JSON form (MarshalJSON) used by the index on
// disk, the control API (import) and the peer protocol (records). Nix's
// own `path-info --json` form is read where it enters (localstore).
type Info struct {
	StorePath        string            `json:"path"`
	Root             castore.Node      `json:"-"`
	NarHash          storepath.NarHash `json:"-"`
	NarSize          uint64            `json:"nar_size"`
	References       []string          `json:"references,omitempty"` // full paths, sorted
	Deriver          string            `json:"deriver,omitempty"`    // full path
	Sigs             []string          `json:"sigs,omitempty"`
	CA               string            `json:"ca,omitempty"`
	RegistrationTime int64             `json:"registration_time,omitempty"` // unix seconds
	// GuixNarinfo is, for a path of the Guix store, its signed Guix
	// narinfo: the text its signer hashed, byte for byte, with the
	// Signature line and the URL entries that followed (which the node
	// replaces with its own when it serves it). "" when nobody signed it
	// for Guix. Nix signatures (Sigs) are of Nix paths only.
	GuixNarinfo string `json:"guix_narinfo,omitempty"`
	// RootSigs are p2pstore signatures binding Root, and the chunk lists
	// of its files (Lists, castore.ListsDigest), to this path, so that a
	// peer fetching the tree can check every object as it arrives.
	RootSigs []string       `json:"root_sigs,omitempty"`
	Lists    castore.Digest `json:"-"`
	// Private marks a path its owner imported as private: the node never
	// gives it to peers, whatever signs it. Local to this node: peers
	// never see a private path, and one they send is never private here.
	Private bool `json:"private,omitempty"`
	// Pinned marks a path its owner added by hand (an import, nix copy
	// --to the daemon socket) or pinned: the disk limit never collects
	// it. Local to this node, as Private is.
	Pinned bool `json:"pinned,omitempty"`
	// Source says how the path came to this node (empty in records
	// written before it was kept). Local to this node, as Private is.
	Source Source `json:"source,omitempty"`
}

// Source is how a path came to the node.
type Source string

const (
	SourceImport   Source = "import"   // added by its owner: import, nix copy --to the daemon socket
	SourcePeer     Source = "peer"     // fetched from peers
	SourceUpstream Source = "upstream" // pulled through from an upstream cache
	SourceLocal    Source = "local"    // copied from the machine's Nix store (local.share)
)

// HashPart returns the 32-character hash part of the store path.
func (i *Info) HashPart() string {
	base := path.Base(i.StorePath)
	if len(base) < storepath.HashLen {
		return base
	}
	return base[:storepath.HashLen]
}

// Fingerprint returns what a Nix signature of this path signs.
func (i *Info) Fingerprint() string {
	return narinfo.Fingerprint(i.StorePath, i.NarHash, i.NarSize, i.References)
}

// AddSig adds a signature unless it is already there.
func (i *Info) AddSig(sig string) {
	for _, s := range i.Sigs {
		if s == sig {
			return
		}
	}
	i.Sigs = append(i.Sigs, sig)
}

// DropBadSigs removes the signatures that claim to be by one of keys (by
// name) but do not verify, and returns them: a stale signature left by a
// rotated key, or a forged one. As in Nix, such a signature is no reason
// to refuse a path; the path is trusted when another one verifies.
// Signatures by other keys cannot be checked here and are kept.
func (i *Info) DropBadSigs(keys []narinfo.PublicKey) (dropped []string) {
	fp := i.Fingerprint()
	kept := i.Sigs[:0]
	for _, sig := range i.Sigs {
		if badSig(fp, sig, keys) {
			dropped = append(dropped, sig)
		} else {
			kept = append(kept, sig)
		}
	}
	i.Sigs = kept
	return dropped
}

// badSig reports whether sig names one of keys but does not verify with
// it.
func badSig(fp, sig string, keys []narinfo.PublicKey) bool {
	name, _, _ := strings.Cut(sig, ":")
	named := false
	for _, k := range keys {
		if k.Name() == name {
			if k.Verify(fp, sig) {
				return false
			}
			named = true
		}
	}
	return named
}

// TrustedBy reports whether one of the signatures verifies with one of keys.
func (i *Info) TrustedBy(keys []narinfo.PublicKey) bool {
	return narinfo.VerifyAny(i.Fingerprint(), i.Sigs, keys)
}

// GuixTrustedBy checks a Guix path's Guix narinfo: it parses, describes
// this very path by Guix's rule of equivalence (path, NarHash, NarSize,
// references in order), and one of keys signed it. The error says which
// failed.
func (i *Info) GuixTrustedBy(keys []guix.PublicKey) error {
	if i.GuixNarinfo == "" {
		return fmt.Errorf("%s: no Guix narinfo: %w", i.StorePath, guix.ErrUnsigned)
	}
	ni, err := guix.Parse([]byte(i.GuixNarinfo))
	if err != nil {
		return fmt.Errorf("%s: %w", i.StorePath, err)
	}
	want := &guix.NarInfo{StorePath: i.StorePath, NarHash: i.NarHash, NarSize: i.NarSize, References: BaseNames(i.References)}
	if !guix.Equivalent(ni, want) {
		return fmt.Errorf("%s: its Guix narinfo describes another NAR (path, NarHash, NarSize or references differ)", i.StorePath)
	}
	return ni.Verify(keys)
}

// MarshalJSON encodes an Info with its root node and hash.
func (i *Info) MarshalJSON() ([]byte, error) {
	type plain Info
	var root, lists []byte
	if i.Root.Type != 0 {
		root = i.Root.Marshal()
	}
	if i.Lists != (castore.Digest{}) {
		lists = i.Lists[:]
	}
	return json.Marshal(struct {
		*plain
		Root    []byte `json:"root,omitempty"`
		NarHash string `json:"nar_hash"`
		Lists   []byte `json:"lists,omitempty"`
	}{(*plain)(i), root, i.NarHash.String(), lists})
}

// UnmarshalJSON decodes what MarshalJSON wrote. The root may be absent
// (an import's header: the node makes the tree from the NAR).
func (i *Info) UnmarshalJSON(b []byte) error {
	type plain Info
	var r struct {
		*plain
		Root    []byte `json:"root"`
		NarHash string `json:"nar_hash"`
		Lists   []byte `json:"lists"`
	}
	r.plain = (*plain)(i)
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	var root castore.Node
	if len(r.Root) > 0 {
		var err error
		if root, err = castore.UnmarshalNode(r.Root); err != nil {
			return err
		}
	}
	h, err := storepath.ParseNarHash(r.NarHash)
	if err != nil {
		return err
	}
	if len(r.Lists) != 0 && len(r.Lists) != castore.DigestSize {
		return fmt.Errorf("pathinfo: lists digest of %d bytes", len(r.Lists))
	}
	i.Root, i.NarHash = root, h
	copy(i.Lists[:], r.Lists)
	return nil
}

// Validate checks the metadata of a path: its store path, references,
// deriver and size. (Put checks the root.)
func (i *Info) Validate(storeDir string) error {
	if _, err := storepath.Parse(storeDir, i.StorePath); err != nil {
		return err
	}
	if i.NarSize == 0 {
		return errors.New("pathinfo: NarSize is 0")
	}
	for _, r := range i.References {
		if _, err := storepath.Parse(storeDir, r); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
	}
	if i.Deriver != "" {
		if _, err := storepath.Parse(storeDir, i.Deriver); err != nil {
			return fmt.Errorf("deriver: %w", err)
		}
	}
	return nil
}

// ErrNotFound is returned for a path the index does not hold.
var ErrNotFound = errors.New("path not found")

var (
	bucketPaths = []byte("paths")
	bucketMeta  = []byte("meta")
	bucketUsed  = []byte("used")      // hash part -> last use, unix nanoseconds
	bucketBad   = []byte("invalid")   // hash part -> Invalid, JSON
	metaNarSize = []byte("nar_bytes") // sum of NarSize over all paths
	metaPinned  = []byte("pinned")    // number of pinned paths
	metaPaths   = []byte("paths")     // number of paths
	// metaSource + Info.Source: number of paths of that source.
	metaSource = []byte("source:")
	// metaPinsMigrated is set once the records of an index written before
	// pins existed are pinned (migratePins).
	metaPinsMigrated = []byte("pins_migrated")
)

// Index is the path index. Decoded records are cached: a narinfo request
// then costs no transaction and no JSON decode.
type Index struct {
	db    *bolt.DB
	cache *cache.Map[string, *Info]
	// mu orders filling the cache from the file (read-locked) after
	// writes (locked), so that a slow read never caches an old record.
	mu sync.RWMutex
}

// cachePaths bounds the decoded-record cache (about 1 KB a record).
const cachePaths = 16 << 10

// clone copies an Info deeply enough that the caller may change it.
func (i *Info) clone() *Info {
	c := *i
	c.References = append([]string(nil), i.References...)
	c.Sigs = append([]string(nil), i.Sigs...)
	c.RootSigs = append([]string(nil), i.RootSigs...)
	c.Root.Target = append([]byte(nil), i.Root.Target...)
	return &c
}

// Open opens or creates the index file.
func Open(file string) (*Index, error) {
	db, err := bolt.Open(file, 0o600, &bolt.Options{NoFreelistSync: true, InitialMmapSize: 256 << 20})
	if err != nil {
		return nil, fmt.Errorf("pathinfo: opening %s: %w", file, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPaths, bucketMeta, bucketUsed, bucketBad} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := migratePins(tx); err != nil {
			return err
		}
		return countOnce(tx)
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Index{db: db, cache: cache.New[string, *Info](cachePaths)}, nil
}

// migratePins pins, once, the records that have no last use: those
// written before the disk limit existed (Put always records a use). They
// were imported by hand or fetched, which the old records do not say;
// pinned is the safe side, where a limit set on upgrading would otherwise
// remove them first, as never used. Their use is set to now, should their
// owner unpin them.
func migratePins(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta.Get(metaPinsMigrated) != nil {
		return nil
	}
	paths, times := tx.Bucket(bucketPaths), tx.Bucket(bucketUsed)
	now := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
	var old [][]byte
	err := paths.ForEach(func(k, _ []byte) error {
		if times.Get(k) == nil {
			old = append(old, k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	pinned := int64(0)
	for _, k := range old {
		var info Info
		if err := json.Unmarshal(paths.Get(k), &info); err != nil {
			return fmt.Errorf("pathinfo: record %s: %w", k, err)
		}
		if !info.Pinned {
			info.Pinned = true
			pinned++
			v, err := json.Marshal(&info)
			if err != nil {
				return err
			}
			if err := paths.Put(k, v); err != nil {
				return err
			}
		}
		if err := times.Put(k, now); err != nil {
			return err
		}
	}
	if err := addTo(meta, metaPinned, pinned); err != nil {
		return err
	}
	return meta.Put(metaPinsMigrated, []byte{1})
}

// countOnce counts the paths, and those of each source, of an index
// written before Put and Delete kept these counts, so that Totals never
// walks the records.
func countOnce(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta.Get(metaPaths) != nil {
		return nil
	}
	total, bySource := int64(0), map[Source]int64{}
	err := tx.Bucket(bucketPaths).ForEach(func(k, v []byte) error {
		var info Info
		if err := json.Unmarshal(v, &info); err != nil {
			return fmt.Errorf("pathinfo: record %s: %w", k, err)
		}
		total++
		bySource[info.Source]++
		return nil
	})
	if err != nil {
		return err
	}
	for src, count := range bySource {
		if err := addTo(meta, sourceKey(src), count); err != nil {
			return err
		}
	}
	return meta.Put(metaPaths, binary.BigEndian.AppendUint64(nil, uint64(total)))
}

func sourceKey(src Source) []byte { return append(bytes.Clone(metaSource), src...) }

// Close closes the index.
func (x *Index) Close() error { return x.db.Close() }

// Get returns the info for a store path's hash part.
func (x *Index) Get(hash string) (*Info, error) {
	if info, ok := x.cache.Get(hash); ok {
		return info.clone(), nil
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	var info *Info
	err := x.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketPaths).Get([]byte(hash))
		if v == nil {
			return ErrNotFound
		}
		info = new(Info)
		return json.Unmarshal(v, info)
	})
	if err == nil {
		x.cache.Put(hash, info.clone())
	}
	return info, err
}

// Has reports whether the index holds the hash part.
func (x *Index) Has(hash string) bool {
	var ok bool
	x.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketPaths).Get([]byte(hash)) != nil
		return nil
	})
	return ok
}

// Put adds or replaces a path's record; this makes the path valid.
func (x *Index) Put(info *Info) error {
	if info.Root.Type == 0 {
		return errors.New("pathinfo: no root node")
	}
	v, err := json.Marshal(info)
	if err != nil {
		return err
	}
	key := []byte(info.HashPart())
	x.mu.Lock()
	defer x.mu.Unlock()
	err = x.db.Update(func(tx *bolt.Tx) error {
		paths := tx.Bucket(bucketPaths)
		var old Info
		delta := int64(info.NarSize)
		pinned := int64(b2i(info.Pinned))
		prev := paths.Get(key)
		meta := tx.Bucket(bucketMeta)
		if prev == nil {
			if err := addTo(meta, metaPaths, 1); err != nil {
				return err
			}
		} else if json.Unmarshal(prev, &old) == nil {
			delta -= int64(old.NarSize)
			pinned -= int64(b2i(old.Pinned))
		}
		if prev == nil || old.Source != info.Source {
			if prev != nil {
				if err := addTo(meta, sourceKey(old.Source), -1); err != nil {
					return err
				}
			}
			if err := addTo(meta, sourceKey(info.Source), 1); err != nil {
				return err
			}
		}
		if err := paths.Put(key, v); err != nil {
			return err
		}
		if err := tx.Bucket(bucketBad).Delete(key); err != nil { // valid again
			return err
		}
		// A new path counts as used now; a record replaced (pinned,
		// unpinned, a signature added) keeps its last use, or unpin
		// and gc would remove other paths before it.
		if prev == nil {
			if err := tx.Bucket(bucketUsed).Put(key, binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))); err != nil {
				return err
			}
		}
		if err := addTo(meta, metaPinned, pinned); err != nil {
			return err
		}
		return addTo(meta, metaNarSize, delta)
	})
	if err == nil {
		x.cache.Put(string(key), info.clone())
	}
	return err
}

// Delete removes a path's record; its objects become garbage.
func (x *Index) Delete(hash string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.cache.Delete(hash)
	return x.db.Update(func(tx *bolt.Tx) error {
		paths := tx.Bucket(bucketPaths)
		prev := paths.Get([]byte(hash))
		if prev == nil {
			return nil
		}
		var old Info
		if err := json.Unmarshal(prev, &old); err != nil {
			old = Info{} // counted as a path all the same
		}
		if err := uncount(tx.Bucket(bucketMeta), &old); err != nil {
			return err
		}
		if err := tx.Bucket(bucketUsed).Delete([]byte(hash)); err != nil {
			return err
		}
		return paths.Delete([]byte(hash))
	})
}

// Invalid is a path made invalid: its last record, and why.
type Invalid struct {
	Info   *Info  `json:"info"`
	Reason string `json:"reason"`
	Since  int64  `json:"since"` // unix seconds
}

// Invalidate makes a valid path invalid (see the package doc) and returns
// its record; ErrNotFound when the index holds no valid record of it.
func (x *Index) Invalidate(hash, reason string) (*Info, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.cache.Delete(hash)
	var old Info
	err := x.db.Update(func(tx *bolt.Tx) error {
		paths, key := tx.Bucket(bucketPaths), []byte(hash)
		prev := paths.Get(key)
		if prev == nil {
			return ErrNotFound
		}
		if err := json.Unmarshal(prev, &old); err != nil {
			return fmt.Errorf("pathinfo: record %s: %w", hash, err)
		}
		v, err := json.Marshal(&Invalid{Info: &old, Reason: reason, Since: time.Now().Unix()})
		if err != nil {
			return err
		}
		if err := uncount(tx.Bucket(bucketMeta), &old); err != nil {
			return err
		}
		if err := tx.Bucket(bucketUsed).Delete(key); err != nil {
			return err
		}
		if err := tx.Bucket(bucketBad).Put(key, v); err != nil {
			return err
		}
		return paths.Delete(key)
	})
	if err != nil {
		return nil, err
	}
	return &old, nil
}

// uncount takes a record that leaves bucket "paths" out of the totals.
func uncount(meta *bolt.Bucket, old *Info) error {
	for k, d := range map[string]int64{string(metaPaths): -1, string(metaNarSize): -int64(old.NarSize),
		string(metaPinned): -int64(b2i(old.Pinned)), string(sourceKey(old.Source)): -1} {
		if err := addTo(meta, []byte(k), d); err != nil {
			return err
		}
	}
	return nil
}

// Invalid returns the invalid path with this hash part; ErrNotFound when
// it is not one.
func (x *Index) Invalid(hash string) (*Invalid, error) {
	var inv *Invalid
	err := x.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBad).Get([]byte(hash))
		if v == nil {
			return ErrNotFound
		}
		inv = new(Invalid)
		return json.Unmarshal(v, inv)
	})
	return inv, err
}

// ForEachInvalid calls fn for every invalid path, in hash order, until fn
// returns an error.
func (x *Index) ForEachInvalid(fn func(*Invalid) error) error {
	return x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBad).ForEach(func(k, v []byte) error {
			inv := new(Invalid)
			if err := json.Unmarshal(v, inv); err != nil {
				return fmt.Errorf("pathinfo: invalid record %s: %w", k, err)
			}
			return fn(inv)
		})
	})
}

func counter(b *bolt.Bucket, key []byte) uint64 {
	if v := b.Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// addTo adds delta to a counter, which never goes below 0.
func addTo(b *bolt.Bucket, key []byte, delta int64) error {
	if delta == 0 {
		return nil
	}
	total := int64(counter(b, key)) + delta
	return b.Put(key, binary.BigEndian.AppendUint64(nil, uint64(max(total, 0))))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Touch records when paths were last used (unix nanoseconds by hash
// part), in one transaction: the node batches its uses. A time older
// than the one recorded, or for a path the index lacks, is ignored.
func (x *Index) Touch(used map[string]int64) error {
	if len(used) == 0 {
		return nil
	}
	hashes := make([]string, 0, len(used))
	for h := range used {
		hashes = append(hashes, h)
	}
	sort.Strings(hashes) // ordered inserts, as bbolt likes them
	return x.db.Update(func(tx *bolt.Tx) error {
		paths, times := tx.Bucket(bucketPaths), tx.Bucket(bucketUsed)
		for _, h := range hashes {
			k := []byte(h)
			if paths.Get(k) == nil {
				continue
			}
			if v := times.Get(k); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) >= used[h] {
				continue
			}
			if err := times.Put(k, binary.BigEndian.AppendUint64(nil, uint64(used[h]))); err != nil {
				return err
			}
		}
		return nil
	})
}

// ForEachUsed calls fn for every path with when it was last used (unix
// nanoseconds; 0 when never recorded), in hash order, until fn returns an
// error.
func (x *Index) ForEachUsed(fn func(info *Info, lastUsed int64) error) error {
	return x.db.View(func(tx *bolt.Tx) error {
		times := tx.Bucket(bucketUsed)
		return forEach(tx, func(info *Info) error {
			var t int64
			if v := times.Get([]byte(info.HashPart())); len(v) == 8 {
				t = int64(binary.BigEndian.Uint64(v))
			}
			return fn(info, t)
		})
	})
}

// Totals are the index's counts.
type Totals struct {
	Paths    int
	NarBytes uint64 // sum of NarSize: the logical size of everything held
	Pinned   int    // paths the disk limit keeps whatever it says
	// BySource counts the paths of each source (those of records older
	// than Info.Source under "").
	BySource map[Source]int
}

// Totals returns the index's counts: counters kept by Put and Delete,
// read without walking the records.
func (x *Index) Totals() (Totals, error) {
	t := Totals{BySource: map[Source]int{}}
	err := x.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		t.Paths = int(counter(meta, metaPaths))
		t.NarBytes = counter(meta, metaNarSize)
		t.Pinned = int(counter(meta, metaPinned))
		c := meta.Cursor()
		for k, v := c.Seek(metaSource); bytes.HasPrefix(k, metaSource); k, v = c.Next() {
			if len(v) == 8 && binary.BigEndian.Uint64(v) > 0 {
				t.BySource[Source(k[len(metaSource):])] = int(binary.BigEndian.Uint64(v))
			}
		}
		return nil
	})
	return t, err
}

// ForEach calls fn for every path, in hash order, until fn returns an error.
func (x *Index) ForEach(fn func(*Info) error) error {
	return x.db.View(func(tx *bolt.Tx) error { return forEach(tx, fn) })
}

// Page returns up to max records in hash order, from the first hash part
// after after ("" for the start): a long listing reads the index in
// pages, each its own short transaction, so that no read stays open while
// a slow reader takes it (a read held open keeps the file from growing).
func (x *Index) Page(after string, max int) ([]*Info, error) {
	var out []*Info
	err := x.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketPaths).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && after != "" && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil && len(out) < max; k, v = c.Next() {
			info := new(Info)
			if err := json.Unmarshal(v, info); err != nil {
				return fmt.Errorf("pathinfo: record %s: %w", k, err)
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

func forEach(tx *bolt.Tx, fn func(*Info) error) error {
	return tx.Bucket(bucketPaths).ForEach(func(k, v []byte) error {
		info := new(Info)
		if err := json.Unmarshal(v, info); err != nil {
			return fmt.Errorf("pathinfo: record %s: %w", k, err)
		}
		return fn(info)
	})
}

// Snapshot is the index as it was when it was taken, whatever is written
// after: a walk over it that counts something sees exactly the writes
// made before, so the caller can count the later ones itself. Close it
// when done (the file cannot grow its mapping while one is open) and
// before the index.
type Snapshot struct{ tx *bolt.Tx }

// Snapshot takes a snapshot of the index.
func (x *Index) Snapshot() (*Snapshot, error) {
	tx, err := x.db.Begin(false)
	if err != nil {
		return nil, err
	}
	return &Snapshot{tx: tx}, nil
}

// ForEach calls fn for every path of the snapshot, in hash order, until fn
// returns an error. One goroutine at a time.
func (s *Snapshot) ForEach(fn func(*Info) error) error { return forEach(s.tx, fn) }

// Close releases the snapshot.
func (s *Snapshot) Close() error { return s.tx.Rollback() }

// BaseNames returns the basenames of full store paths.
func BaseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = p[strings.LastIndexByte(p, '/')+1:]
	}
	return out
}
