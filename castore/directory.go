package castore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Directory is one Merkle node of a tree: its entries, each list sorted
// byte-wise by name, names unique across the three lists. It is encoded as
// the snix castore protobuf message snix.castore.v1.Directory, by hand and
// canonically (fields in number order, proto3 defaults left out), and
// addressed by the BLAKE3-256 of that encoding.
type Directory struct {
	Directories []DirectoryEntry
	Files       []FileEntry
	Symlinks    []SymlinkEntry
}

// DirectoryEntry points at a child directory by digest. Size is the child's
// Directory.Size.
type DirectoryEntry struct {
	Name   []byte
	Digest Digest
	Size   uint64
}

// FileEntry points at a blob: Digest is the BLAKE3-256 of the whole
// content, Size its length.
type FileEntry struct {
	Name       []byte
	Digest     Digest
	Size       uint64
	Executable bool
}

// SymlinkEntry is a symbolic link and its target.
type SymlinkEntry struct {
	Name   []byte
	Target []byte
}

// Size is the number of nodes below d: its entries plus, for each child
// directory, that child's size. This is the rule that snix's proto comment
// and the original tvix code state ("the number of all regular and symlink
// elements, the number of directory elements, and their size fields").
// Later snix revisions count directory entries differently, so a tree with
// a subdirectory may not get the same digest there; test vectors pin ours.
func (d *Directory) Size() uint64 {
	n := uint64(len(d.Files) + len(d.Symlinks) + len(d.Directories))
	for _, e := range d.Directories {
		n += e.Size
	}
	return n
}

// Protobuf wire types and field tags used by the castore messages.
const (
	wireVarint = 0
	wireBytes  = 2
)

func tag(field, wire int) byte { return byte(field<<3 | wire) }

func appendBytesField(b []byte, field int, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = append(b, tag(field, wireBytes))
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendVarintField(b []byte, field int, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = append(b, tag(field, wireVarint))
	return binary.AppendUvarint(b, v)
}

func appendMessage(b []byte, field int, msg []byte) []byte {
	b = append(b, tag(field, wireBytes))
	b = binary.AppendUvarint(b, uint64(len(msg)))
	return append(b, msg...)
}

func boolVarint(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

func (e *DirectoryEntry) appendTo(b []byte) []byte {
	b = appendBytesField(b, 1, e.Name)
	b = appendBytesField(b, 2, e.Digest[:])
	return appendVarintField(b, 3, e.Size)
}

func (e *FileEntry) appendTo(b []byte) []byte {
	b = appendBytesField(b, 1, e.Name)
	b = appendBytesField(b, 2, e.Digest[:])
	b = appendVarintField(b, 3, e.Size)
	return appendVarintField(b, 4, boolVarint(e.Executable))
}

func (e *SymlinkEntry) appendTo(b []byte) []byte {
	b = appendBytesField(b, 1, e.Name)
	return appendBytesField(b, 2, e.Target)
}

// Marshal returns the canonical encoding of d.
func (d *Directory) Marshal() []byte { return d.appendMarshal(nil) }

// appendMarshal appends the canonical encoding of d to b.
func (d *Directory) appendMarshal(b []byte) []byte {
	var msg []byte
	for i := range d.Directories {
		msg = d.Directories[i].appendTo(msg[:0])
		b = appendMessage(b, 1, msg)
	}
	for i := range d.Files {
		msg = d.Files[i].appendTo(msg[:0])
		b = appendMessage(b, 2, msg)
	}
	for i := range d.Symlinks {
		msg = d.Symlinks[i].appendTo(msg[:0])
		b = appendMessage(b, 3, msg)
	}
	return b
}

// Digest returns the address of d: the BLAKE3-256 of its canonical encoding.
func (d *Directory) Digest() Digest { return Sum(d.Marshal()) }

// Validate checks the invariants a castore directory must hold: valid
// names, each list sorted byte-wise with no name repeated across the lists,
// and non-empty symlink targets.
func (d *Directory) Validate() error {
	check := func(kind string, i int, name, prev []byte) error {
		if err := ValidateName(name); err != nil {
			return err
		}
		if i > 0 && bytes.Compare(prev, name) >= 0 {
			return fmt.Errorf("castore: %s %q is not sorted after %q", kind, name, prev)
		}
		return nil
	}
	for i, e := range d.Directories {
		var prev []byte
		if i > 0 {
			prev = d.Directories[i-1].Name
		}
		if err := check("directory", i, e.Name, prev); err != nil {
			return err
		}
	}
	for i, e := range d.Files {
		var prev []byte
		if i > 0 {
			prev = d.Files[i-1].Name
		}
		if err := check("file", i, e.Name, prev); err != nil {
			return err
		}
	}
	for i, e := range d.Symlinks {
		var prev []byte
		if i > 0 {
			prev = d.Symlinks[i-1].Name
		}
		if err := check("symlink", i, e.Name, prev); err != nil {
			return err
		}
		if err := ValidateSymlinkTarget(e.Target); err != nil {
			return err
		}
	}
	// Each list is sorted: a name in two of them is next to itself in
	// the merged order.
	var prev []byte
	return d.EachEntry(func(name []byte, _ Node) error {
		if prev != nil && bytes.Equal(prev, name) {
			return fmt.Errorf("castore: duplicate name %q", name)
		}
		prev = name
		return nil
	})
}

// MaxNameLen is the longest entry name accepted (Linux NAME_MAX).
const MaxNameLen = 255

// MaxSymlinkTargetLen is the longest symlink target accepted (PATH_MAX - 1).
const MaxSymlinkTargetLen = 4095

// ValidateName checks one path component: not empty, not "." or "..", no
// "/" or NUL, at most MaxNameLen bytes.
func ValidateName(name []byte) error {
	switch {
	case len(name) == 0:
		return errors.New("castore: empty name")
	case len(name) > MaxNameLen:
		return fmt.Errorf("castore: name of %d bytes is longer than %d", len(name), MaxNameLen)
	case string(name) == "." || string(name) == "..":
		return fmt.Errorf("castore: invalid name %q", name)
	case bytes.IndexByte(name, '/') >= 0 || bytes.IndexByte(name, 0) >= 0:
		return fmt.Errorf("castore: name %q contains '/' or NUL", name)
	}
	return nil
}

// ValidateSymlinkTarget checks a symlink target: not empty, no NUL, at most
// MaxSymlinkTargetLen bytes.
func ValidateSymlinkTarget(t []byte) error {
	switch {
	case len(t) == 0:
		return errors.New("castore: empty symlink target")
	case len(t) > MaxSymlinkTargetLen:
		return fmt.Errorf("castore: symlink target of %d bytes is longer than %d", len(t), MaxSymlinkTargetLen)
	case bytes.IndexByte(t, 0) >= 0:
		return errors.New("castore: symlink target contains NUL")
	}
	return nil
}

// UnmarshalDirectory decodes and validates a directory. It accepts only the
// canonical encoding, so that a decoded directory re-encodes to the same
// bytes and keeps its digest.
func UnmarshalDirectory(b []byte) (*Directory, error) {
	d := new(Directory)
	err := forEachField(b, func(field, wire int, v uint64, msg []byte) error {
		if wire != wireBytes {
			return fmt.Errorf("field %d: wire type %d", field, wire)
		}
		switch field {
		case 1:
			var e DirectoryEntry
			if err := decodeEntry(msg, &e.Name, &e.Digest, &e.Size, nil, nil); err != nil {
				return err
			}
			d.Directories = append(d.Directories, e)
		case 2:
			var e FileEntry
			if err := decodeEntry(msg, &e.Name, &e.Digest, &e.Size, &e.Executable, nil); err != nil {
				return err
			}
			d.Files = append(d.Files, e)
		case 3:
			var e SymlinkEntry
			if err := decodeEntry(msg, &e.Name, nil, nil, nil, &e.Target); err != nil {
				return err
			}
			d.Symlinks = append(d.Symlinks, e)
		default:
			return fmt.Errorf("unknown field %d", field)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("castore: decoding directory: %w", err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if !bytes.Equal(d.appendMarshal(make([]byte, 0, len(b))), b) {
		return nil, errors.New("castore: directory is not canonically encoded")
	}
	return d, nil
}

// decodeEntry decodes one entry message; nil destinations mark fields the
// entry kind does not have.
func decodeEntry(b []byte, name *[]byte, digest *Digest, size *uint64, exec *bool, target *[]byte) error {
	return forEachField(b, func(field, wire int, v uint64, msg []byte) error {
		switch {
		case field == 1 && wire == wireBytes:
			*name = msg
		case field == 2 && wire == wireBytes && digest != nil:
			d, err := DigestFromBytes(msg)
			if err != nil {
				return err
			}
			*digest = d
		case field == 2 && wire == wireBytes && target != nil:
			*target = msg
		case field == 3 && wire == wireVarint && size != nil:
			*size = v
		case field == 4 && wire == wireVarint && exec != nil:
			if v > 1 {
				return fmt.Errorf("executable flag %d", v)
			}
			*exec = v == 1
		default:
			return fmt.Errorf("unexpected field %d (wire type %d)", field, wire)
		}
		return nil
	})
}

// forEachField walks the fields of a protobuf message, handing varints as v
// and length-delimited fields as msg (aliasing b).
func forEachField(b []byte, fn func(field, wire int, v uint64, msg []byte) error) error {
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return errors.New("bad field key")
		}
		b = b[n:]
		field, wire := int(key>>3), int(key&7)
		var v uint64
		var msg []byte
		switch wire {
		case wireVarint:
			v, n = binary.Uvarint(b)
			if n <= 0 {
				return errors.New("bad varint")
			}
			b = b[n:]
		case wireBytes:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return errors.New("bad length")
			}
			msg = b[n : n+int(l)]
			b = b[n+int(l):]
		default:
			return fmt.Errorf("unsupported wire type %d", wire)
		}
		if err := fn(field, wire, v, msg); err != nil {
			return err
		}
	}
	return nil
}

// EachEntry calls fn with the directory's entries in byte order of their
// names, the order of a NAR: the three sorted lists, merged.
func (d *Directory) EachEntry(fn func(name []byte, n Node) error) error {
	i, j, k := 0, 0, 0
	for i < len(d.Directories) || j < len(d.Files) || k < len(d.Symlinks) {
		var best []byte
		which := -1
		if i < len(d.Directories) {
			best, which = d.Directories[i].Name, 0
		}
		if j < len(d.Files) && (which < 0 || bytes.Compare(d.Files[j].Name, best) < 0) {
			best, which = d.Files[j].Name, 1
		}
		if k < len(d.Symlinks) && (which < 0 || bytes.Compare(d.Symlinks[k].Name, best) < 0) {
			best, which = d.Symlinks[k].Name, 2
		}
		var n Node
		switch which {
		case 0:
			e := d.Directories[i]
			n = Node{Type: TypeDirectory, Digest: e.Digest, Size: e.Size}
			i++
		case 1:
			e := d.Files[j]
			n = Node{Type: TypeFile, Digest: e.Digest, Size: e.Size, Executable: e.Executable}
			j++
		case 2:
			e := d.Symlinks[k]
			n = Node{Type: TypeSymlink, Target: e.Target}
			k++
		}
		if err := fn(best, n); err != nil {
			return err
		}
	}
	return nil
}
