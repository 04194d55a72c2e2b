package httpcache

import (
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// compressor wraps w in the encoder for compression; closeOut finishes the
// stream.
func compressor(w io.Writer, compression string) (out io.Writer, closeOut func() error) {
	switch compression {
	case CompressionZstd:
		enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(2), zstd.WithLowerEncoderMem(true))
		if err != nil {
			panic(err) // only for invalid options
		}
		return enc, enc.Close
	case CompressionXz:
		enc, err := xz.NewWriter(w)
		if err != nil {
			panic(err)
		}
		return enc, enc.Close
	}
	return w, func() error { return nil }
}
