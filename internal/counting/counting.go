// Package counting counts the bytes written to a writer, keeping the
// io.ReaderFrom of what it wraps, so that sendfile still happens
// underneath.
package counting

import "io"

// Writer counts what is written through it to W.
type Writer struct {
	W io.Writer
	N int64
}

func (c *Writer) Write(p []byte) (int, error) {
	k, err := c.W.Write(p)
	c.N += int64(k)
	return k, err
}

// ReadFrom is W's, where W has one.
func (c *Writer) ReadFrom(r io.Reader) (int64, error) {
	var k int64
	var err error
	if rf, ok := c.W.(io.ReaderFrom); ok {
		k, err = rf.ReadFrom(r)
	} else {
		k, err = io.Copy(struct{ io.Writer }{c.W}, r)
	}
	c.N += k
	return k, err
}
