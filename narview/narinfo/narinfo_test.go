package narinfo

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p2pstore/p2pstore/internal/nixtest"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

func TestParseFormatRoundTrip(t *testing.T) {
	ni := &NarInfo{
		StorePath:   "/nix/store/pci706gvhbkq8148vnyq02kf7gilm1i1-top",
		URL:         "nar/pci706gvhbkq8148vnyq02kf7gilm1i1.nar",
		Compression: "none",
		NarHash:     sha256.Sum256([]byte("x")),
		NarSize:     216,
		References:  []string{"4fhl7lrams7zd3bsyk2lh9fab23mkjmd-mid", "x5qbk3rdymh6vmm8gfx4kpmkcyzfsi7b-leaf"},
		Deriver:     "60km3fljimj3fjgdqv4cv37vrpjikbdl-top.drv",
		Sigs:        []string{"a-1:AAAA", "b-1:BBBB"},
		CA:          "fixed:r:sha256:102jk6332i5h85q45x7pvj9v6whws1biglsfp5h1ayb9x3nmxb49",
	}
	back, err := Parse(ni.String())
	if err != nil {
		t.Fatal(err)
	}
	if back.String() != ni.String() {
		t.Fatalf("round trip:\n%s\nvs\n%s", back, ni)
	}
	want := "1;/nix/store/pci706gvhbkq8148vnyq02kf7gilm1i1-top;" + ni.NarHash.String() +
		";216;/nix/store/4fhl7lrams7zd3bsyk2lh9fab23mkjmd-mid,/nix/store/x5qbk3rdymh6vmm8gfx4kpmkcyzfsi7b-leaf"
	if got := ni.Fingerprint(); got != want {
		t.Fatalf("fingerprint %q", got)
	}
	for name, bad := range map[string]string{
		"no store path": "URL: x\nNarHash: " + ni.NarHash.String() + "\nNarSize: 1\n",
		"no hash":       "StorePath: /nix/store/x\nURL: x\nNarSize: 1\n",
		"bad size":      "StorePath: /nix/store/x\nURL: x\nNarHash: " + ni.NarHash.String() + "\nNarSize: -1\n",
		"bad line":      "StorePath /nix/store/x\n",
		"bad hash":      "StorePath: /nix/store/x\nURL: x\nNarHash: sha256:zzz\nNarSize: 1\n",
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestKeysAgainstNix checks that our keys and signatures are Nix's: Nix
// derives the same public key from our secret key, and a signature made by
// `nix store sign` verifies against our fingerprint.
func TestKeysAgainstNix(t *testing.T) {
	nixtest.Require(t)
	sk, err := GenerateKey("p2pstore-test-1")
	if err != nil {
		t.Fatal(err)
	}
	cmd := nixtest.Command("nix", "key", "convert-secret-to-public")
	cmd.Stdin = strings.NewReader(sk.String())
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != sk.Public().String() {
		t.Fatalf("nix derives %s, we %s", out, sk.Public())
	}

	// Sign a fresh path in a throwaway store with Nix, verify with us.
	store := t.TempDir()
	src := filepath.Join(t.TempDir(), "signed-thing")
	os.WriteFile(src, []byte("sign me"), 0o644)
	p := nixtest.Line(t, "nix-store", "--store", store, "--add", src)
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, []byte(sk.String()), 0o600)
	nixtest.Output(t, "nix", "store", "sign", "--store", store, "--key-file", keyFile, p)
	var infos []struct {
		Path       string   `json:"path"`
		NarHash    string   `json:"narHash"`
		NarSize    uint64   `json:"narSize"`
		References []string `json:"references"`
		Signatures []string `json:"signatures"`
	}
	if err := json.Unmarshal(nixtest.Output(t, "nix", "path-info", "--store", store, "--json", p), &infos); err != nil {
		t.Fatal(err)
	}
	info := infos[0]
	h, err := storepath.ParseNarHash(info.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	fp := Fingerprint(info.Path, h, info.NarSize, info.References)
	if len(info.Signatures) != 1 || !sk.Public().Verify(fp, info.Signatures[0]) {
		t.Fatalf("Nix's signature %v does not verify against %q", info.Signatures, fp)
	}
	if sk.Sign(fp) != info.Signatures[0] {
		t.Fatal("our signature differs from Nix's (ed25519 is deterministic)")
	}
	other, _ := GenerateKey("p2pstore-test-1")
	if other.Public().Verify(fp, info.Signatures[0]) {
		t.Fatal("a different key with the same name verified")
	}
	if VerifyAny(fp+"x", info.Signatures, []PublicKey{sk.Public()}) {
		t.Fatal("signature verified for another fingerprint")
	}
}
