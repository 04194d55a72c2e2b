package lzip

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// lzipCommand runs the lzip command on in, or skips t when it is not
// installed (scripts/test.sh installs it).
func lzipCommand(t testing.TB, in []byte, args ...string) ([]byte, error) {
	t.Helper()
	if _, err := exec.LookPath("lzip"); err != nil {
		t.Skip("the lzip command is not installed: it makes these tests' lzip files (apt-get install lzip)")
	}
	cmd := exec.Command("lzip", args...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, errors.New(strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// compress is data as `lzip args...` compresses it.
func compress(t testing.TB, data []byte, args ...string) []byte {
	t.Helper()
	out, err := lzipCommand(t, data, append([]string{"-c"}, args...)...)
	if err != nil {
		t.Fatalf("lzip %v: %v", args, err)
	}
	return out
}

// commandAccepts says whether `lzip -d --trailing-error` decodes the file
// without error, the reference this package is held to.
func commandAccepts(t testing.TB, file []byte) bool {
	t.Helper()
	_, err := lzipCommand(t, file, "-d", "-c", "--trailing-error")
	return err == nil
}

// testData is n bytes that compress somewhat, as a NAR does: lines of
// text with numbers, and stretches of random bytes.
func testData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	var b bytes.Buffer
	for b.Len() < n {
		if rng.IntN(4) == 0 {
			chunk := make([]byte, 1+rng.IntN(4096))
			for i := range chunk {
				chunk[i] = byte(rng.Uint32())
			}
			b.Write(chunk)
			continue
		}
		for range 1 + rng.IntN(50) {
			b.WriteString("the file number ")
			b.WriteString(string(rune('a' + rng.IntN(26))))
			b.WriteString(" of the store path, with its mode and size\n")
		}
	}
	return b.Bytes()[:n]
}

func decode(file []byte, maxSize int64) ([]byte, error) {
	z, err := NewReader(bytes.NewReader(file), maxSize)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(z)
}

// members counts a file's members by walking back through the member
// sizes of their trailers.
func members(t *testing.T, file []byte) int {
	t.Helper()
	n := 0
	for end := len(file); end > 0; n++ {
		size := int(binary.LittleEndian.Uint64(file[end-8 : end]))
		if size < headerSize+trailerSize || size > end || !bytes.HasPrefix(file[end-size:], []byte("LZIP")) {
			t.Fatalf("no member ends at byte %d", end)
		}
		end -= size
	}
	return n
}

// Files the lzip command made decode to the data, at the levels that
// differ most (-0 uses another match finder, -9 the largest dictionary),
// with and without a size bound.
func TestRoundTrip(t *testing.T) {
	data := testData(1, 1<<20)
	for _, level := range []string{"-0", "-6", "-9"} {
		t.Run(level, func(t *testing.T) {
			file := compress(t, data, level)
			for _, maxSize := range []int64{0, int64(len(data))} {
				got, err := decode(file, maxSize)
				if err != nil {
					t.Fatalf("maxSize %d: %v", maxSize, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("maxSize %d: %d bytes decoded differ from the %d compressed", maxSize, len(got), len(data))
				}
			}
		})
	}
}

// Small and empty data: a member whose stream is only the marker.
func TestSmall(t *testing.T) {
	for _, data := range [][]byte{{}, []byte("x"), []byte("hello, hello, hello, hello")} {
		got, err := decode(compress(t, data), int64(len(data)))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%q: got %q, %v", data, got, err)
		}
	}
}

// Multi-member files: one lzip -b cut into members, and files
// concatenated.
func TestMultiMember(t *testing.T) {
	data := testData(2, 1<<20)
	file := compress(t, data, "-0", "-b", "100KiB")
	if n := members(t, file); n < 3 {
		t.Fatalf("lzip -b 100KiB made %d members of %d bytes; want several", n, len(data))
	}
	got, err := decode(file, int64(len(data)))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("lzip -b: %d bytes, %v", len(got), err)
	}

	parts := [][]byte{testData(3, 5000), testData(4, 70000), []byte("last")}
	var cat []byte
	for i, p := range parts {
		cat = append(cat, compress(t, p, []string{"-0", "-6", "-9"}[i])...)
	}
	got, err = decode(cat, 0)
	if err != nil || !bytes.Equal(got, bytes.Join(parts, nil)) {
		t.Fatalf("concatenated files: %d bytes, %v", len(got), err)
	}
}

// Read sizes: one byte at a time, and the input handed over a byte at a
// time, decode the same.
func TestSmallReads(t *testing.T) {
	data := testData(5, 100<<10)
	file := compress(t, data, "-6")
	z, err := NewReader(iotest.OneByteReader(bytes.NewReader(file)), 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(iotest.OneByteReader(z))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
}

// Every damage to a file is an ErrCorrupt naming what failed, and the
// lzip command refuses the same file.
func TestCorrupt(t *testing.T) {
	data := testData(6, 200<<10)
	good := compress(t, data, "-6")
	first := compress(t, data[:1000])
	two := append(bytes.Clone(first), good...)
	n := len(good)
	cases := []struct {
		name string
		file []byte
		says string // in the error
	}{
		{"CRC32", flip(good, n-20), "CRC32"},
		{"data size", flip(good, n-16), "bytes of data"},
		{"member size", flip(good, n-8), "bytes long"},
		{"CRC32 of the first of two members", flip(two, len(first)-20), "member 1 (at byte 0): CRC32"},
		{"data size of the second of two members", flip(two, len(two)-16), "member 2 (at byte " + strconv.Itoa(len(first)) + "): "},
		{"stream", flip(good, n/2), ""},
		{"magic", flip(good, 0), "no lzip header"},
		{"version 0", set(good, 4, 0), "version 0"},
		{"version 2", set(good, 4, 2), "version 2"},
		{"dictionary of 2^11", set(good, 5, 11), "dictionary size"},
		{"dictionary of 2^30", set(good, 5, 30), "dictionary size"},
		{"garbage after the member", append(bytes.Clone(good), "garbage"...), "data after the last member"},
		{"zeros after the member", append(bytes.Clone(good), make([]byte, 512)...), "data after the last member"},
		{"one byte after the member", append(bytes.Clone(good), 'x'), "data after the last member"},
		{"a header cut short after the member", append(bytes.Clone(good), "LZI"...), "cut short"},
		{"a bad header after the member", append(bytes.Clone(good), "LZIP\x02\x0c"...), "version 2"},
		{"empty", nil, "empty input"},
		{"not lzip", []byte("plain text, not compressed"), "no lzip header"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := decode(c.file, 0)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("got %d bytes and %v; want an ErrCorrupt saying %q", len(got), err, c.says)
			}
			if commandAccepts(t, c.file) {
				t.Errorf("the lzip command accepts what this package refuses (%v)", err)
			}
		})
	}
}

// The first byte of an LZMA stream is always zero: another is refused.
// (lzip 1.23 ignores that byte; later versions refuse it too.)
func TestFirstByte(t *testing.T) {
	file := set(compress(t, []byte("data")), headerSize, 1)
	if got, err := decode(file, 0); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "LZMA stream") {
		t.Fatalf("got %q, %v", got, err)
	}
}

// A file cut short anywhere, in a header, a stream or a trailer, of the
// first member or the second, fails as ErrCorrupt (io.ErrUnexpectedEOF
// inside), never decodes as if whole.
func TestTruncated(t *testing.T) {
	first := compress(t, testData(7, 3000), "-6")
	file := append(first, compress(t, testData(8, 30000), "-6")...)
	for cut := 1; cut < len(file); cut++ {
		if cut == len(first) {
			continue // the first member, whole: a valid file
		}
		_, err := decode(file[:cut], 0)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("cut at %d of %d: %v", cut, len(file), err)
		}
		if cut >= len(magic) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d of %d: %v, want io.ErrUnexpectedEOF inside", cut, len(file), err)
		}
	}
}

// maxSize bounds the data: a file that decodes to more fails, at that
// point.
func TestMaxSize(t *testing.T) {
	data := testData(9, 100<<10)
	file := compress(t, data, "-9")
	got, err := decode(file, int64(len(data))-1)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("got %d bytes and %v", len(got), err)
	}
	if len(got) >= len(data) {
		t.Fatalf("read %d bytes past the bound", len(got))
	}
}

// An input that fails is reported as its error, not as a corrupt file.
func TestInputError(t *testing.T) {
	file := compress(t, testData(10, 100<<10), "-6")
	broken := errors.New("the connection broke")
	r := io.MultiReader(bytes.NewReader(file[:len(file)/2]), iotest.ErrReader(broken))
	z, err := NewReader(r, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(z); !errors.Is(err, broken) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("got %v", err)
	}
}

func TestDictSize(t *testing.T) {
	for _, c := range []struct {
		b    byte
		size int64
		ok   bool
	}{
		{0x0c, 4 << 10, true},
		{0xd3, 320 << 10, true}, // 2^19 - 6 * 2^15
		{0x1d, 512 << 20, true},
		{0x3d, 512<<20 - 32<<20, true},
		{0x2c, 4<<10 - 256, false}, // below 4 KiB
		{0x0b, 0, false},
		{0x1e, 0, false},
	} {
		size, ok := decodeDictSize(c.b)
		if ok != c.ok || ok && size != c.size {
			t.Errorf("%#02x: %d %v, want %d %v", c.b, size, ok, c.size, c.ok)
		}
	}
}

func flip(file []byte, i int) []byte {
	return set(file, i, file[i]^0x40)
}

func set(file []byte, i int, b byte) []byte {
	f := bytes.Clone(file)
	f[i] = b
	return f
}
