package nar

// Compression is how a NAR is compressed on its way out, named as in
// narinfo files: a node renders NARs on the fly in each of these.
type Compression string

const (
	CompressionNone Compression = "none"
	CompressionZstd Compression = "zstd"
	CompressionXz   Compression = "xz"
)

// Compressions are those a node renders, uncompressed first.
var Compressions = []Compression{CompressionNone, CompressionZstd, CompressionXz}

// Suffix is the file name suffix of a NAR so compressed.
func (c Compression) Suffix() string {
	switch c {
	case CompressionZstd:
		return ".nar.zst"
	case CompressionXz:
		return ".nar.xz"
	}
	return ".nar"
}
