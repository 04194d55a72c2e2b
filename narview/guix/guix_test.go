package guix

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
)

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustPublicKey(t *testing.T, path string) PublicKey {
	t.Helper()
	k, err := LoadPublicKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustParse(t *testing.T, text []byte) *NarInfo {
	t.Helper()
	ni, err := Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

// TestRealNarinfos: the build farm's narinfos parse, verify under its
// key and no other, and are written back byte for byte.
func TestRealNarinfos(t *testing.T) {
	ci := mustPublicKey(t, "testdata/ci.guix.gnu.org.pub")
	bordeaux := mustPublicKey(t, "testdata/bordeaux.guix.gnu.org.pub")
	sed := mustRead(t, "testdata/ci-sed-4.4.narinfo")
	hello := mustRead(t, "testdata/ci-hello-2.10-hurd.narinfo")

	ni := mustParse(t, hello)
	if err := ni.Verify([]PublicKey{bordeaux, ci}); err != nil {
		t.Fatal(err)
	}
	if got := ni.String(); got != string(hello) {
		t.Fatalf("written back differently:\n%s", got)
	}
	want := []NAR{
		{URL: "nar/gzip/803q5wapfnmr91ag8d9dzwabkbdxz3ay-hello-2.10", Compression: "gzip", FileSize: 61822},
		{URL: "nar/lzip/803q5wapfnmr91ag8d9dzwabkbdxz3ay-hello-2.10", Compression: "lzip", FileSize: 52887},
	}
	if len(ni.NARs) != 2 || ni.NARs[0] != want[0] || ni.NARs[1] != want[1] || ni.SignedNARs() != 2 {
		t.Fatalf("NARs %+v (%d signed)", ni.NARs, ni.SignedNARs())
	}
	if ni.StorePath != "/gnu/store/803q5wapfnmr91ag8d9dzwabkbdxz3ay-hello-2.10" || ni.NarSize != 204328 ||
		ni.NarHash.String() != "sha256:0g4k1kppjs5148ynm4zw4x1kpaby67npc3ws6s7y7hf0il1cgryk" ||
		len(ni.References) != 3 || ni.System != "i586-gnu" || ni.Deriver != "jqdvjhcxxnbq370y8i2c973c9zfiqrgl-hello-2.10.drv" {
		t.Fatalf("fields %+v", ni)
	}
	if err := ni.Verify([]PublicKey{bordeaux}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("verified with only the other farm's key: %v", err)
	}

	ni = mustParse(t, sed)
	if err := ni.Verify([]PublicKey{ci}); err != nil {
		t.Fatal(err)
	}
	if ni.String() != string(sed) || ni.SignedNARs() != 1 || ni.NARs[0].FileSize != 218663 {
		t.Fatalf("sed: %+v", ni)
	}
	_, sig, err := ParseSignatureField(ni.Signature)
	if err != nil {
		t.Fatal(err)
	}
	if !sig.Key.Equal(ci) || sig.Hash != sha256.Sum256(ni.Signed) {
		t.Fatal("the signature names another key or hash")
	}
	// The signature's text is libgcrypt's, which we write the same.
	b64 := ni.Signature[strings.LastIndexByte(ni.Signature, ';')+1:]
	if raw, _ := base64.StdEncoding.DecodeString(b64); sig.String() != string(raw) {
		t.Fatalf("signature text written differently:\n%s", sig)
	}
}

// TestLibgcryptVector: a narinfo signed by libgcrypt with a key it made.
// It verifies here, and signing the same fields with the same key gives
// the same file byte for byte (the nonce is deterministic, the text
// layout libgcrypt's).
func TestLibgcryptVector(t *testing.T) {
	text := mustRead(t, "testdata/libgcrypt-signed.narinfo")
	pub := mustPublicKey(t, "testdata/libgcrypt-key.pub")
	sec, err := LoadSecretKeyFile("testdata/libgcrypt-key.sec")
	if err != nil {
		t.Fatal(err)
	}
	if !sec.Public().Equal(pub) {
		t.Fatal("the secret key's public half differs from the .pub file")
	}
	if sec.String() != string(mustRead(t, "testdata/libgcrypt-key.sec")) || pub.String() != string(mustRead(t, "testdata/libgcrypt-key.pub")) {
		t.Fatal("keys written back differently")
	}
	ni := mustParse(t, text)
	if err := ni.Verify([]PublicKey{pub}); err != nil {
		t.Fatal(err)
	}
	if ni.SignedNARs() != 0 || len(ni.NARs) != 2 {
		t.Fatalf("NARs %+v, %d signed", ni.NARs, ni.SignedNARs())
	}
	fresh := &NarInfo{StorePath: ni.StorePath, NarHash: ni.NarHash, NarSize: ni.NarSize,
		References: ni.References, Deriver: ni.Deriver, NARs: ni.NARs}
	if err := fresh.Sign(sec, "libgcrypt-test"); err != nil {
		t.Fatal(err)
	}
	if got := fresh.String(); got != string(text) {
		t.Fatalf("our signing differs from libgcrypt's:\n%s\nwant\n%s", got, text)
	}
}

// TestOwnSignatures: narinfos signed with our keys verify here and with
// the independent verifier; keys survive their files.
func TestOwnSignatures(t *testing.T) {
	for i := range 8 {
		k, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseSecretKey([]byte(k.String()))
		if err != nil {
			t.Fatal(err)
		}
		pub, err := ParsePublicKey([]byte(k.Public().String()))
		if err != nil || !pub.Equal(k.Public()) || !back.Public().Equal(pub) {
			t.Fatalf("key files do not round trip: %v", err)
		}
		ni := &NarInfo{
			StorePath:  "/gnu/store/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-own-" + string(rune('a'+i)),
			NarHash:    sha256.Sum256([]byte{byte(i)}),
			NarSize:    uint64(1000 + i),
			References: []string{"9vs3gkp6svam82zw7vjlml7iiarcs11c-glibc-2.31"},
			NARs:       []NAR{{URL: NARURL("zstd", "x"), Compression: "zstd", FileSize: 10}},
		}
		if err := ni.Sign(back, "node-"+string(rune('a'+i))); err != nil {
			t.Fatal(err)
		}
		text := []byte(ni.String())
		got := mustParse(t, text)
		if err := got.Verify([]PublicKey{pub}); err != nil {
			t.Fatal(err)
		}
		if !independentVerify(t, text, pub.point.Bytes()) {
			t.Fatalf("the independent verifier refuses our signature:\n%s", text)
		}
		// Deterministic: the same key and text sign the same.
		again := *ni
		again.Sign(k, "node-"+string(rune('a'+i)))
		if again.Signature != ni.Signature {
			t.Fatal("signing twice gave two signatures")
		}
	}
}

func TestWriterLayout(t *testing.T) {
	k, err := LoadSecretKeyFile("testdata/libgcrypt-key.sec")
	if err != nil {
		t.Fatal(err)
	}
	base := "0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-g++-1.0"
	ni := &NarInfo{
		StorePath:  "/gnu/store/" + base,
		NarHash:    sha256.Sum256([]byte("nar")),
		NarSize:    4216,
		References: []string{base},
		Deriver:    "jqdvjhcxxnbq370y8i2c973c9zfiqrgl-g++-1.0.drv",
		System:     "x86_64-linux",
		NARs: []NAR{
			{URL: NARURL("none", base), Compression: "none", FileSize: 4216},
			{URL: NARURL("zstd", base), Compression: "zstd"},
			{URL: NARURL("lzip", base), Compression: "lzip", FileSize: 900},
		},
	}
	if err := ni.Sign(k, "host"); err != nil {
		t.Fatal(err)
	}
	want := "StorePath: /gnu/store/" + base + "\n" +
		"NarHash: " + ni.NarHash.String() + "\n" +
		"NarSize: 4216\n" +
		"References: " + base + "\n" +
		"Deriver: jqdvjhcxxnbq370y8i2c973c9zfiqrgl-g++-1.0.drv\n" +
		"System: x86_64-linux\n" +
		"Signature: " + ni.Signature + "\n" +
		"URL: nar/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-g%2B%2B-1.0\nCompression: none\nFileSize: 4216\n" +
		"URL: nar/zstd/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-g%2B%2B-1.0\nCompression: zstd\n" +
		// After an unknown size no size can be written: readers pair them by position.
		"URL: nar/lzip/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-g%2B%2B-1.0\nCompression: lzip\n"
	if got := ni.String(); got != want {
		t.Fatalf("layout:\n%s\nwant\n%s", got, want)
	}
	if !strings.HasPrefix(ni.Signature, "1;host;") {
		t.Fatalf("signature field %q", ni.Signature)
	}
	// A relay changes the unsigned NAR lines; the signature still holds.
	ni.NARs = []NAR{{URL: "http://elsewhere/nar/x", Compression: "gzip", FileSize: 7}}
	relayed := mustParse(t, []byte(ni.String()))
	if err := relayed.Verify([]PublicKey{k.Public()}); err != nil || relayed.NARs[0].URL != "http://elsewhere/nar/x" {
		t.Fatalf("relayed: %v %+v", err, relayed.NARs)
	}
	// Unsigned: no Signature line.
	plain := &NarInfo{StorePath: ni.StorePath, NarHash: ni.NarHash, NarSize: 1, NARs: ni.NARs}
	if got := plain.String(); got != "StorePath: /gnu/store/"+base+"\nNarHash: "+ni.NarHash.String()+"\nNarSize: 1\nReferences: \nURL: http://elsewhere/nar/x\nCompression: gzip\nFileSize: 7\n" {
		t.Fatalf("unsigned:\n%s", got)
	}
	if err := plain.Verify([]PublicKey{k.Public()}); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned narinfo: %v", err)
	}
}

// TestReader: fields in any order, unknown ones ignored, first
// occurrences win, NAR lines paired by position.
func TestReader(t *testing.T) {
	h := sha256.Sum256([]byte("x"))
	text := "# a comment\n" +
		"Compression: zstd\n" +
		"References: 9vs3gkp6svam82zw7vjlml7iiarcs11c-glibc-2.31\n" +
		"Frobnicate: yes\n" +
		"URL: nar/zstd/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-x\n" +
		"NarSize:  77 \r\n" +
		"StorePath: /gnu/store/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-x\n" +
		"URL: nar/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-x\n" +
		"FileSize: 40\n" +
		"NarHash: " + (&NarInfo{NarHash: h}).NarHash.String() + "\n" +
		"Compression: none\n" +
		"NarSize: 99\n" +
		"\n" +
		"Deriver: ignored-after-the-empty-line\n"
	ni := mustParse(t, []byte(text))
	if ni.NarSize != 77 || ni.NarHash != h || ni.Deriver != "" || ni.Signed != nil ||
		len(ni.NARs) != 2 || ni.NARs[0] != (NAR{URL: "nar/zstd/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-x", Compression: "zstd", FileSize: 40}) ||
		ni.NARs[1] != (NAR{URL: "nar/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-x", Compression: "none"}) {
		t.Fatalf("%+v", ni)
	}
}

// TestBadNarinfos: each bad input gives one error line that says what
// is wrong.
func TestBadNarinfos(t *testing.T) {
	good := string(mustRead(t, "testdata/libgcrypt-signed.narinfo"))
	for name, tc := range map[string]struct{ text, says string }{
		"unknown compression":     {strings.Replace(good, "Compression: zstd", "Compression: brotli", 1), `unknown compression "brotli"`},
		"URL without compression": {strings.Replace(good, "Compression: zstd\n", "", 1), "2 URL lines but 1 Compression lines"},
		"hex NarHash":             {strings.Replace(good, "NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", "NarHash: sha256:"+strings.Repeat("ab", 32), 1), "NarHash"},
		"no StorePath":            {strings.Replace(good, "StorePath:", "Storepath:", 1), "no StorePath"},
		"relative StorePath":      {strings.Replace(good, "StorePath: /gnu/store/", "StorePath: gnu/store/", 1), "StorePath"},
		"bad reference":           {strings.Replace(good, "References: ", "References: ../etc ", 1), "References"},
		"no NarSize":              {strings.Replace(good, "NarSize: 4216\n", "", 1), "no NarSize"},
		"no References":           {strings.Replace(good, "References:", "Refs:", 1), "no References"},
		"no URL":                  {"StorePath: /gnu/store/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-x\nNarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\nNarSize: 1\nReferences: \n", "no URL"},
		"unmatched line":          {"StorePath /gnu/store/x\n", "unmatched line"},
		"continuation":            {good + "+more\n", "continuation line"},
		"signature mid-line":      {strings.Replace(good, "Deriver:", "X: Signature: Deriver:", 1), "inside a line"},
		"NARs on both sides":      {strings.Replace(good, "References:", "URL: nar/a\nCompression: none\nReferences:", 1), "both above and below"},
		"bad FileSize":            {strings.Replace(good, "FileSize: 1200", "FileSize: big", 1), "FileSize"},
		"too large":               {good + strings.Repeat("#\n", MaxSize), "too large"},
	} {
		_, err := Parse([]byte(tc.text))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "guix narinfo: ") || !strings.Contains(msg, tc.says) || strings.Contains(msg, "\n") {
			t.Errorf("%s: error %q", name, msg)
		}
	}
}

// TestBadSignatures: each way a signature fails is told apart, in one
// line, as Guix tells them apart.
func TestBadSignatures(t *testing.T) {
	good := string(mustRead(t, "testdata/libgcrypt-signed.narinfo"))
	pub := mustPublicKey(t, "testdata/libgcrypt-key.pub")
	ci := mustPublicKey(t, "testdata/ci.guix.gnu.org.pub")
	ni := mustParse(t, []byte(good))
	_, sig, err := ParseSignatureField(ni.Signature)
	if err != nil {
		t.Fatal(err)
	}
	field := func(s string) string {
		return strings.Replace(good, ni.Signature, "1;h;"+base64.StdEncoding.EncodeToString([]byte(s)), 1)
	}
	sigText := sig.String()
	// The hash in the signature changed to that of other text: the
	// hash check passes for that text, the ECDSA check does not.
	otherText := strings.Replace(good, "NarSize: 4216", "NarSize: 4217", 1)
	otherHash := sha256.Sum256([]byte(otherText[:strings.Index(otherText, "Signature:")]))
	forged := strings.Replace(strings.Replace(otherText, ni.Signature, "SIG", 1), "SIG",
		"1;h;"+base64.StdEncoding.EncodeToString([]byte(strings.Replace(sigText, hexUpper(sig.Hash[:]), hexUpper(otherHash[:]), 1))), 1)
	flippedS := append([]byte(nil), sig.S...)
	flippedS[len(flippedS)-1] ^= 1
	for name, tc := range map[string]struct {
		text    string
		trusted []PublicKey
		want    error
	}{
		"good":               {good, []PublicKey{ci, pub}, nil},
		"untrusted key":      {good, []PublicKey{ci}, ErrUntrusted},
		"no trusted keys":    {good, nil, ErrUntrusted},
		"tampered text":      {otherText, []PublicKey{pub}, ErrHashMismatch},
		"forged hash":        {forged, []PublicKey{pub}, ErrInvalid},
		"flipped s":          {field(strings.Replace(sigText, hexUpper(sig.S), hexUpper(flippedS), 1)), []PublicKey{pub}, ErrInvalid},
		"zero r":             {field(strings.Replace(sigText, hexUpper(sig.R), "00", 1)), []PublicKey{pub}, ErrInvalid},
		"r over n":           {field(strings.Replace(sigText, hexUpper(sig.R), "FF"+hexUpper(sig.R), 1)), []PublicKey{pub}, ErrInvalid},
		"unsigned":           {strings.Replace(good, "Signature: "+ni.Signature+"\n", "", 1), []PublicKey{pub}, ErrUnsigned},
		"version 2":          {strings.Replace(good, "Signature: 1;", "Signature: 2;", 1), []PublicKey{pub}, ErrCorrupt},
		"two parts":          {strings.Replace(good, "Signature: 1;libgcrypt-test;", "Signature: 1;", 1), []PublicKey{pub}, ErrCorrupt},
		"bad base64":         {strings.Replace(good, "Signature: 1;libgcrypt-test;", "Signature: 1;libgcrypt-test;!", 1), []PublicKey{pub}, ErrCorrupt},
		"not a sexp":         {field("(signature (data"), []PublicKey{pub}, ErrCorrupt},
		"no sig-val":         {field(strings.Replace(sigText, "sig-val", "sig-vol", 1)), []PublicKey{pub}, ErrCorrupt},
		"eddsa data":         {field(strings.Replace(sigText, "rfc6979", "eddsa", 1)), []PublicKey{pub}, ErrCorrupt},
		"sha512":             {field(strings.Replace(sigText, "sha256", "sha512", 1)), []PublicKey{pub}, ErrCorrupt},
		"bad key":            {field(strings.Replace(sigText, "Ed25519", "NIST P-256", 1)), []PublicKey{pub}, ErrCorrupt},
		"StorePath unsigned": {strings.Replace(good, "StorePath:", "Storepath:", 1) + "StorePath: /gnu/store/0ik2s0xdsl2d6ycw86r7f4bl3gbsfqwa-x\n", []PublicKey{pub}, ErrCorrupt},
	} {
		ni, err := Parse([]byte(tc.text))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		err = ni.Verify(tc.trusted)
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
			continue
		}
		if err != nil && (strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "guix narinfo /gnu/store/")) {
			t.Errorf("%s: error %q", name, err)
		}
	}
}

func hexUpper(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }

func TestBadKeys(t *testing.T) {
	sec := string(mustRead(t, "testdata/libgcrypt-key.sec"))
	pub := string(mustRead(t, "testdata/libgcrypt-key.pub"))
	other, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	q := "D8D60895BFAC3E1B690D94B4FEB89CEF505A2E84745BDC7700C6F11EA1FD6CF0"
	for name, tc := range map[string]struct{ text, says string }{
		"malformed":   {"(public-key (ecc (curve Ed25519) (q #" + q + "#)", "s-expression"},
		"not a key":   {"(signature)", "not a public-key"},
		"rsa":         {"(public-key (rsa (n #00C0#) (e #010001#)))", "RSA"},
		"eddsa":       {strings.Replace(pub, "(curve Ed25519)", "(curve Ed25519) (flags eddsa)", 1), "EdDSA"},
		"other curve": {strings.Replace(pub, "Ed25519", "NIST P-256", 1), "curve"},
		"no q":        {"(public-key (ecc (curve Ed25519)))", "no (q"},
		"short q":     {strings.Replace(pub, q, q[:62], 1), "31 bytes"},
		"q off curve": {strings.Replace(pub, q, "02"+strings.Repeat("00", 31), 1), "not a point"},
		"identity q":  {strings.Replace(pub, q, "01"+strings.Repeat("00", 31), 1), "identity"},
		"trailing":    {pub + " (x)", "s-expression"},
		"huge":        {strings.Repeat(" ", MaxKeySize+1), "too large"},
	} {
		_, err := ParsePublicKey([]byte(tc.text))
		if err == nil {
			t.Errorf("public %s: accepted", name)
		} else if msg := err.Error(); !strings.HasPrefix(msg, "guix public key: ") || !strings.Contains(msg, tc.says) || strings.Contains(msg, "\n") {
			t.Errorf("public %s: error %q", name, msg)
		}
	}
	for name, tc := range map[string]struct{ text, says string }{
		"public key":     {pub, "not a private-key"},
		"no d":           {strings.Replace(sec, "(d #", "(e #", 1), "no (d"},
		"zero d":         {"(private-key (ecc (curve Ed25519) (q #" + q + "#) (d #0000#)))", "zero"},
		"d of another q": {strings.Replace(other.String(), hexUpper(other.Public().point.Bytes()), q, 1), "does not give q"},
		"malformed":      {sec[:len(sec)-4], "s-expression"},
	} {
		_, err := ParseSecretKey([]byte(tc.text))
		if err == nil {
			t.Errorf("secret %s: accepted", name)
		} else if msg := err.Error(); !strings.HasPrefix(msg, "guix secret key: ") || !strings.Contains(msg, tc.says) || strings.Contains(msg, "\n") {
			t.Errorf("secret %s: error %q", name, msg)
		}
	}
	if _, err := LoadSecretKeyFile("testdata/nonexistent.sec"); err == nil {
		t.Error("a missing key file loaded")
	}
}

func TestEquivalent(t *testing.T) {
	a := mustParse(t, mustRead(t, "testdata/libgcrypt-signed.narinfo"))
	b := &NarInfo{StorePath: a.StorePath, NarHash: a.NarHash, NarSize: a.NarSize,
		References: append([]string(nil), a.References...), NARs: []NAR{{URL: "elsewhere", Compression: "none"}}}
	if !Equivalent(a, b) {
		t.Fatal("an unsigned copy with other URLs is not equivalent")
	}
	b.References[0], b.References[1] = b.References[1], b.References[0]
	if Equivalent(a, b) {
		t.Fatal("references in another order are equivalent (Guix compares lists)")
	}
	c := *a
	c.NarSize++
	if Equivalent(a, &c) {
		t.Fatal("another NarSize is equivalent")
	}
	if bytes.Equal([]byte(a.String()), []byte(b.String())) {
		t.Fatal("test is vacuous")
	}
}
