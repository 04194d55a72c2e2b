package castore

import (
	"bytes"
	"errors"
	"fmt"
)

// NodeType says what a Node is.
type NodeType uint8

// The node types of a castore tree.
const (
	TypeDirectory NodeType = 1 + iota
	TypeFile
	TypeSymlink
)

func (t NodeType) String() string {
	switch t {
	case TypeDirectory:
		return "directory"
	case TypeFile:
		return "file"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("NodeType(%d)", uint8(t))
}

// Node is the root of a tree, such as a store path: a directory, a file or
// a symlink, without a name. It is encoded as snix's Entry message (a oneof
// of the three entry kinds) with the name left empty.
type Node struct {
	Type       NodeType
	Digest     Digest // the directory's or the blob's digest
	Size       uint64 // Directory.Size, or the file's length
	Executable bool
	Target     []byte // symlink target
}

// Marshal returns the canonical encoding of n as a snix Entry.
func (n Node) Marshal() []byte {
	switch n.Type {
	case TypeDirectory:
		e := DirectoryEntry{Digest: n.Digest, Size: n.Size}
		return appendMessage(nil, 1, e.appendTo(nil))
	case TypeFile:
		e := FileEntry{Digest: n.Digest, Size: n.Size, Executable: n.Executable}
		return appendMessage(nil, 2, e.appendTo(nil))
	case TypeSymlink:
		e := SymlinkEntry{Target: n.Target}
		return appendMessage(nil, 3, e.appendTo(nil))
	}
	return nil
}

// UnmarshalNode decodes a root node encoded by Marshal.
func UnmarshalNode(b []byte) (Node, error) {
	var n Node
	count := 0
	err := forEachField(b, func(field, wire int, _ uint64, msg []byte) error {
		count++
		if wire != wireBytes {
			return fmt.Errorf("field %d: wire type %d", field, wire)
		}
		var name []byte
		var err error
		switch field {
		case 1:
			n.Type = TypeDirectory
			err = decodeEntry(msg, &name, &n.Digest, &n.Size, nil, nil)
		case 2:
			n.Type = TypeFile
			err = decodeEntry(msg, &name, &n.Digest, &n.Size, &n.Executable, nil)
		case 3:
			n.Type = TypeSymlink
			err = decodeEntry(msg, &name, nil, nil, nil, &n.Target)
		default:
			return fmt.Errorf("unknown field %d", field)
		}
		if err == nil && len(name) > 0 {
			err = errors.New("root node has a name")
		}
		return err
	})
	if err == nil && count != 1 {
		err = fmt.Errorf("%d entries, want 1", count)
	}
	if err == nil && n.Type == TypeSymlink {
		err = ValidateSymlinkTarget(n.Target)
	}
	if err == nil && !bytes.Equal(n.Marshal(), b) {
		err = errors.New("not canonically encoded")
	}
	if err != nil {
		return Node{}, fmt.Errorf("castore: decoding node: %w", err)
	}
	return n, nil
}
