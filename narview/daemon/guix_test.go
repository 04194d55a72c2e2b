package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

const gnuStore = "/gnu/store"

func guixPath(i int) string { return fmt.Sprintf("%s/%032d-guix-%d", gnuStore, i, i) }

// guixServer serves one connection in Guix's dialect over a pipe.
func guixServer(t testing.TB, store Store, opts GuixOptions) net.Conn {
	client, server := net.Pipe()
	srv := NewGuixServer(store, gnuStore, opts, nil)
	go srv.ServeConn(context.Background(), server, server)
	t.Cleanup(func() { client.Close() })
	return client
}

// guixStore holds two Guix paths, the second referring to the first.
func guixStore(t testing.TB) (*memStore, [2]string, [2][]byte) {
	store := newMemStore()
	ps := [2]string{guixPath(1), guixPath(2)}
	nars := [2][]byte{narOf(t, "first"), narOf(t, "second")}
	for i, p := range ps {
		info := &pathinfo.Info{StorePath: p, NarHash: sha256.Sum256(nars[i]), NarSize: uint64(len(nars[i])),
			References: []string{ps[0]}, Deriver: gnuStore + "/00000000000000000000000000000009-x.drv"}
		if err := store.AddPath(context.Background(), info, bytes.NewReader(nars[i])); err != nil {
			t.Fatal(err)
		}
	}
	return store, ps, nars
}

// TestGuixHandshake: the bytes a Guix client of 0x163 or 0x164 reads,
// exactly: the magic, 0x164, then STDERR_LAST alone after its version,
// affinity and reserveSpace (no features, version string or trust flag).
func TestGuixHandshake(t *testing.T) {
	for _, v := range []uint64{0x163, 0x164} {
		t.Run(fmt.Sprintf("%#x", v), func(t *testing.T) {
			conn := guixServer(t, newMemStore(), GuixOptions{})
			send := func(vs ...uint64) {
				for _, x := range vs {
					if err := binary.Write(conn, binary.LittleEndian, x); err != nil {
						t.Fatal(err)
					}
				}
			}
			recv := func() uint64 {
				var x uint64
				if err := binary.Read(conn, binary.LittleEndian, &x); err != nil {
					t.Fatal(err)
				}
				return x
			}
			send(workerMagic1)
			if m, ver := recv(), recv(); m != workerMagic2 || ver != 0x164 {
				t.Fatalf("server sent %#x %#x", m, ver)
			}
			send(v, 1, 3, 0) // version, affinity on CPU 3, reserveSpace
			if tag := recv(); tag != stderrLast {
				t.Fatalf("after the handshake: %#x", tag)
			}
			// IsValidPath, and its answer follows at once.
			send(opIsValidPath, uint64(len(guixPath(1))))
			conn.Write(append([]byte(guixPath(1)), make([]byte, (8-len(guixPath(1))%8)%8)...))
			if tag, valid := recv(), recv(); tag != stderrLast || valid != 0 {
				t.Fatalf("IsValidPath: %#x %d", tag, valid)
			}
		})
	}
}

// TestGuixQueries runs the ops `guix gc`, `guix archive` and `guix copy`
// use, through the Guix client a node's import uses.
func TestGuixQueries(t *testing.T) {
	store, ps, nars := guixStore(t)
	c, err := NewGuixClient(guixServer(t, store, GuixOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.IsValidPath(ps[1]); !ok || err != nil {
		t.Fatalf("IsValidPath: %v %v", ok, err)
	}
	info, err := c.QueryPathInfo(ps[1])
	if err != nil {
		t.Fatal(err)
	}
	if info.NarHash != sha256.Sum256(nars[1]) || info.NarSize != uint64(len(nars[1])) || len(info.References) != 1 ||
		info.References[0] != ps[0] || !strings.HasSuffix(info.Deriver, "-x.drv") {
		t.Fatalf("QueryPathInfo: %+v", info)
	}
	if _, err := c.QueryPathInfo(guixPath(99)); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("a path not there: %v", err)
	}
	valid, err := c.QueryValidPaths([]string{ps[0], guixPath(99), ps[1]}, false)
	if err != nil || len(valid) != 2 {
		t.Fatalf("QueryValidPaths: %v %v", valid, err)
	}
	for i, p := range ps {
		var got bytes.Buffer
		if err := c.NarFromPath(p, &got); err != nil || !bytes.Equal(got.Bytes(), nars[i]) {
			t.Fatalf("the NAR of an export of %s: %v (%d bytes)", p, err, got.Len())
		}
	}
	if err := c.NarFromPath(guixPath(99), io.Discard); err == nil || !strings.Contains(err.Error(), "is not valid") {
		t.Fatalf("export of a path not there: %v", err)
	}
	// The ops Nix dropped, and Guix's own, by hand.
	r := raw{t, c}
	if err := r.op(opQueryPathHash, func(w *wireWriter) { w.String(ps[0]) }); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(nars[0])
	if h, err := c.r.String(); err != nil || h != fmt.Sprintf("%x", sum) {
		t.Fatalf("QueryPathHash: %q %v", h, err)
	}
	if err := r.op(opQueryReferences, func(w *wireWriter) { w.String(ps[1]) }); err != nil {
		t.Fatal(err)
	}
	if refs, err := c.r.Strings(); err != nil || len(refs) != 1 || refs[0] != ps[0] {
		t.Fatalf("QueryReferences: %v %v", refs, err)
	}
	if err := r.op(opQueryReferrers, func(w *wireWriter) { w.String(ps[0]) }); err != nil {
		t.Fatal(err)
	}
	if refs, err := c.r.Strings(); err != nil || len(refs) != 2 {
		t.Fatalf("QueryReferrers: %v %v", refs, err)
	}
	if err := r.op(opQueryPathFromHashPart, func(w *wireWriter) { w.String(strings.Repeat("0", 31) + "2") }); err != nil {
		t.Fatal(err)
	}
	if p, err := c.r.String(); err != nil || p != ps[1] {
		t.Fatalf("QueryPathFromHashPart: %q %v", p, err)
	}
	for _, op := range []uint64{opBuiltinBuilders, opSubstituteURLs} {
		if err := r.op(op, nil); err != nil {
			t.Fatal(err)
		}
		if l, err := c.r.Strings(); err != nil || len(l) != 0 {
			t.Fatalf("op %d: %v %v", op, l, err)
		}
	}
	// A path not there: an error, and the connection goes on.
	var de *DaemonError
	if err := r.op(opQueryReferences, func(w *wireWriter) { w.String(guixPath(99)) }); !errors.As(err, &de) {
		t.Fatalf("QueryReferences of a path not there: %v", err)
	}
	if ok, err := c.IsValidPath(ps[0]); !ok || err != nil {
		t.Fatalf("after an error: %v %v", ok, err)
	}
	// What is not a store path, or not valid, is the client's error, as
	// guix-daemon answers it; the connection goes on.
	for _, tc := range []struct {
		op   uint64
		args func(w *wireWriter)
		want string
	}{
		{opIsValidPath, func(w *wireWriter) { w.String("/tmp/not-in-the-store") }, "/tmp/not-in-the-store"},
		{opQueryValidPaths, func(w *wireWriter) { w.Strings([]string{ps[0], "/etc/passwd", ps[1]}) }, "/etc/passwd"},
		{opExportPath, func(w *wireWriter) { w.String("nonsense"); w.Uint64(1) }, "nonsense"},
		{opCollectGarbage, func(w *wireWriter) {
			w.Uint64(0)
			w.Strings([]string{"/gnu/store/x"})
			for range 5 {
				w.Uint64(0)
			}
		}, "does not delete"},
		{opQueryDeriver, func(w *wireWriter) { w.String(guixPath(99)) }, "is not valid"},
		{opQueryPathFromHashPart, func(w *wireWriter) { w.String("short") }, "invalid hash part"},
	} {
		if err := r.op(tc.op, tc.args); !errors.As(err, &de) || !strings.Contains(de.Msg, tc.want) {
			t.Errorf("op %d: %v, want an error naming %q", tc.op, err, tc.want)
		}
		if ok, err := c.IsValidPath(ps[0]); !ok || err != nil {
			t.Fatalf("after op %d's error: %v %v", tc.op, ok, err)
		}
	}
	// Nix's ops are not Guix's: the connection closes with the reason.
	if err := r.op(opNarFromPath, func(w *wireWriter) { w.String(ps[0]) }); !errors.As(err, &de) || !strings.Contains(de.Msg, "invalid operation") {
		t.Fatalf("NarFromPath on the Guix socket: %v", err)
	}
}

// TestGuixSetOptions: SetOptions as clients before 0x161 send it (with
// the build limits) and after (without); the connection stays in step.
func TestGuixSetOptions(t *testing.T) {
	for _, tc := range []struct {
		version uint64
		ints    int
	}{{0x160, 12}, {0x163, 9}, {0x164, 9}} {
		t.Run(fmt.Sprintf("%#x", tc.version), func(t *testing.T) {
			store, ps, _ := guixStore(t)
			c := guixHello(guixServer(t, store, GuixOptions{}), 1<<8|tc.version)
			if err := c.stderr(nil); err != nil {
				t.Fatal(err)
			}
			err := raw{t, c}.op(opSetOptions, func(w *wireWriter) {
				for range tc.ints {
					w.Uint64(0)
				}
				w.Uint64(2)
				for _, s := range []string{"substitute-urls", "http://a http://b", "build-timeout", "3600"} {
					w.String(s)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := c.IsValidPath(ps[0]); !ok || err != nil {
				t.Fatalf("after SetOptions: %v %v", ok, err)
			}
		})
	}
}

// TestGuixExportSigned: an export asked to be signed carries the
// signature of the SHA-256 of all it sent before; without a key it is
// refused with the reason, and the connection goes on.
func TestGuixExportSigned(t *testing.T) {
	store, ps, nars := guixStore(t)
	var signed [sha256.Size]byte
	sign := func(h [sha256.Size]byte) string { signed = h; return "(signature of the export)" }
	for _, withKey := range []bool{true, false} {
		opts := GuixOptions{}
		if withKey {
			opts.SignExport = sign
		}
		c, err := NewGuixClient(guixServer(t, store, opts))
		if err != nil {
			t.Fatal(err)
		}
		var data bytes.Buffer
		err = c.Export(ps[1], true, &data)
		if !withKey {
			var de *DaemonError
			if !errors.As(err, &de) || !strings.Contains(de.Msg, "guix.sign_key_file") || data.Len() != 0 {
				t.Fatalf("a signed export without a key: %v, %d bytes", err, data.Len())
			}
			if ok, err := c.IsValidPath(ps[0]); !ok || err != nil {
				t.Fatalf("after the refusal: %v %v", ok, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		b := data.Bytes()
		if !bytes.HasPrefix(b, nars[1]) {
			t.Fatal("the export does not begin with the NAR")
		}
		tr := newWireReader(bytes.NewReader(b[len(nars[1]):]))
		magic, _ := tr.Uint64()
		path, _ := tr.String()
		refs, _ := tr.Strings()
		deriver, _ := tr.String()
		flag, _ := tr.Uint64()
		sig, err := tr.String()
		if err != nil || magic != exportMagic || path != ps[1] || len(refs) != 1 || refs[0] != ps[0] || deriver == "" || flag != 1 || sig != "(signature of the export)" {
			t.Fatalf("trailer: %#x %q %v %q %d %q %v", magic, path, refs, deriver, flag, sig, err)
		}
		flagAt := len(b) - 8 - 8 - (len(sig)+7)/8*8
		if signed != sha256.Sum256(b[:flagAt]) {
			t.Fatal("the signature is not of the SHA-256 of the NAR and its trailer")
		}
	}
}

// TestDialectMismatch: a Nix client on the Guix socket, and a Guix
// client on the Nix one, are told which socket is theirs.
func TestDialectMismatch(t *testing.T) {
	_, err := NewClient(guixServer(t, newMemStore(), GuixOptions{}), ProtocolVersion)
	if err == nil || !strings.Contains(err.Error(), "not 1.x") && !strings.Contains(err.Error(), "Guix") {
		t.Fatalf("a Nix client on the Guix socket: %v", err)
	}
	_, err = NewGuixClient(pipeServer(t, newMemStore()))
	if err == nil || !strings.Contains(err.Error(), "not Guix's") {
		t.Fatalf("a Guix client on the Nix socket: %v", err)
	}
	// A Guix client that goes on past the version (as guix does) reads
	// why it is turned away.
	c := guixHello(pipeServer(t, newMemStore()), GuixClientVersion)
	var de *DaemonError
	if err := c.stderr(nil); !errors.As(err, &de) || !strings.Contains(de.Msg, "guix.daemon_socket") {
		t.Fatalf("a Guix client on the Nix socket: %v", err)
	}
}

// guixHello sends a Guix client's side of the handshake, offering
// version, and leaves the server's answer to be read.
func guixHello(conn net.Conn, version uint64) *Client {
	c := &Client{conn: conn, r: newWireReader(conn), w: newWireWriter(conn), guix: true, version: 1<<8 | guixWireMinor}
	c.w.Uint64(workerMagic1)
	c.w.Flush()
	c.r.Uint64() // magic
	c.r.Uint64() // the server's version
	c.w.Uint64(version)
	c.w.Uint64(0) // no CPU affinity
	c.w.Uint64(0) // reserveSpace
	c.w.Flush()
	return c
}

// exportStream exports paths from a server of store, framed as `guix
// archive --export` writes them: 1 before each path, 0 at the end.
func exportStream(t *testing.T, store Store, opts GuixOptions, sign bool, paths ...string) []byte {
	t.Helper()
	c, err := NewGuixClient(guixServer(t, store, opts))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	w := newWireWriter(&out)
	for _, p := range paths {
		w.Uint64(1)
		w.Flush()
		if err := c.Export(p, sign, &out); err != nil {
			t.Fatal(err)
		}
	}
	w.Uint64(0)
	w.Flush()
	return out.Bytes()
}

// TestGuixImport: guix archive --import into the node. An archive whose
// signature the server's check accepts adds its paths, infos intact; an
// unsigned one, a rejected signature, a NAR changed after signing and a
// stream that is not an export are refused with the reason, add nothing,
// and leave the connection usable.
func TestGuixImport(t *testing.T) {
	from, ps, nars := guixStore(t)
	signer := GuixOptions{SignExport: func(h [sha256.Size]byte) string { return fmt.Sprintf("signed %x", h) }}
	check := GuixOptions{CheckImport: func(sig string, h [sha256.Size]byte) error {
		if sig != fmt.Sprintf("signed %x", h) {
			return errors.New("signature by an untrusted key")
		}
		return nil
	}, SpoolDir: t.TempDir()}

	to := newMemStore()
	c, err := NewGuixClient(guixServer(t, to, check))
	if err != nil {
		t.Fatal(err)
	}
	added, err := c.Import(bytes.NewReader(exportStream(t, from, signer, true, ps[0], ps[1])))
	if err != nil || len(added) != 2 || added[0] != ps[0] || added[1] != ps[1] {
		t.Fatalf("Import: %v %v", added, err)
	}
	for i, p := range ps {
		info, err := to.PathInfo(context.Background(), p, false)
		if err != nil || info.NarHash != sha256.Sum256(nars[i]) || len(info.References) != 1 || info.References[0] != ps[0] ||
			!strings.HasSuffix(info.Deriver, "-x.drv") || !bytes.Equal(to.nars[p], nars[i]) {
			t.Fatalf("imported %s: %+v %v", p, info, err)
		}
	}

	signed := exportStream(t, from, signer, true, ps[1])
	changed := bytes.Clone(signed)
	changed[bytes.Index(changed, []byte("second"))] ^= 1
	for name, tc := range map[string]struct {
		stream []byte
		want   string
	}{
		"unsigned":      {exportStream(t, from, GuixOptions{}, false, ps[1]), "not signed"},
		"untrusted key": {exportStream(t, from, GuixOptions{SignExport: func([sha256.Size]byte) string { return "forged" }}, true, ps[1]), "untrusted"},
		"changed NAR":   {changed, "untrusted"},
		"not an export": {[]byte{2, 0, 0, 0, 0, 0, 0, 0}, "not an export"},
	} {
		t.Run(name, func(t *testing.T) {
			to := newMemStore()
			c, err := NewGuixClient(guixServer(t, to, check))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Import(bytes.NewReader(tc.stream))
			var de *DaemonError
			if !errors.As(err, &de) || !strings.Contains(de.Msg, tc.want) {
				t.Fatalf("Import: %v, want an error saying %q", err, tc.want)
			}
			if all, _ := to.AllPaths(context.Background()); len(all) != 0 {
				t.Fatalf("a refused import added %v", all)
			}
			if valid, err := c.QueryValidPaths([]string{ps[1]}, false); err != nil || len(valid) != 0 {
				t.Fatalf("after the refusal: %v %v", valid, err)
			}
		})
	}
}

// FuzzGuixServer is FuzzServer for Guix's dialect, after a handshake at
// 0x160 + version%5: the server must neither panic nor hang, whatever
// ops, exports and archives come.
func FuzzGuixServer(f *testing.F) {
	var seed bytes.Buffer
	w := newWireWriter(&seed)
	w.Uint64(opSetOptions)
	for range 9 {
		w.Uint64(0)
	}
	w.Uint64(0)
	for _, op := range []uint64{opQueryPathInfo, opQueryPathHash, opQueryReferences} {
		w.Uint64(op)
		w.String(guixPath(1))
	}
	w.Uint64(opExportPath)
	w.String(guixPath(2))
	w.Uint64(1)
	w.Flush()
	f.Add(byte(3), seed.Bytes())
	// An archive of one path, answering the server's reads.
	var archive bytes.Buffer
	aw := newWireWriter(&archive)
	aw.Uint64(opImportPaths)
	aw.Uint64(1)
	aw.Flush()
	nar := narOf(f, "fuzz")
	h := sha256.New()
	h.Write(nar)
	archive.Write(nar)
	tw := newWireWriter(io.MultiWriter(&archive, h))
	tw.Uint64(exportMagic)
	tw.String(guixPath(3))
	tw.Strings(nil)
	tw.String("")
	tw.Flush()
	aw.Uint64(1)
	aw.String(fmt.Sprintf("signed %x", h.Sum(nil)))
	aw.Uint64(0)
	aw.Flush()
	// The server pulls it in reads of up to 64 KiB: one answer here.
	var seed2 bytes.Buffer
	sw := newWireWriter(&seed2)
	sw.Uint64(opImportPaths)
	sw.Bytes(archive.Bytes()[8:])
	sw.Flush()
	f.Add(byte(4), seed2.Bytes())
	store, _, _ := guixStore(f) // imports add to it: no matter
	opts := GuixOptions{
		SignExport:  func(h [sha256.Size]byte) string { return fmt.Sprintf("signed %x", h) },
		CheckImport: func(sig string, h [sha256.Size]byte) error { return nil },
		SpoolDir:    f.TempDir(),
	}
	f.Fuzz(func(t *testing.T, version byte, ops []byte) {
		hello := binary.LittleEndian.AppendUint64(nil, workerMagic1)
		hello = binary.LittleEndian.AppendUint64(hello, 1<<8|(0x160+uint64(version)%5))
		hello = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(hello, 0), 0)
		in := io.MultiReader(bytes.NewReader(hello), bytes.NewReader(ops))
		serveInput(t, NewGuixServer(store, gnuStore, opts, nil), in)
	})
}
