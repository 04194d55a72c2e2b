package nar

import (
	"bufio"
	"io"
)

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
func bufioWriter(w io.Writer) *bufio.Writer { return bufio.NewWriter(w) }
