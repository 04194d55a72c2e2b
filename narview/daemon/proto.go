package daemon

import (
	"io"

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

const (
	workerMagic1 = 0x6e697863 // "cxin"
	workerMagic2 = 0x6478696f // "oixd"

	// ProtocolVersion is the newest version we speak: 1.38.
	ProtocolVersion = 1<<8 | 38
	// MinClientVersion is the oldest client we accept: 1.21 (Nix 2.1).
	MinClientVersion = 1<<8 | 21

	// NixVersion is what we report as our Nix version (minor >= 33);
	// clients only print it.
	NixVersion = "2.24.0 (p2pstore)"
)

// Stderr channel message tags.
const (
	stderrNext          = 0x6f6c6d67
	stderrRead          = 0x64617461
	stderrWrite         = 0x64617416
	stderrLast          = 0x616c7473
	stderrError         = 0x63787470
	stderrStartActivity = 0x53545254
	stderrStopActivity  = 0x53544f50
	stderrResult        = 0x52534c54
)

// Operation codes.
const (
	opIsValidPath                 = 1
	opHasSubstitutes              = 3
	opQueryReferrers              = 6
	opAddToStore                  = 7
	opAddTextToStore              = 8
	opBuildPaths                  = 9
	opEnsurePath                  = 10
	opAddTempRoot                 = 11
	opAddIndirectRoot             = 12
	opSyncWithGC                  = 13
	opFindRoots                   = 14
	opQueryDeriver                = 18
	opSetOptions                  = 19
	opCollectGarbage              = 20
	opQuerySubstitutablePathInfo  = 21
	opQueryDerivationOutputs      = 22
	opQueryAllValidPaths          = 23
	opQueryPathInfo               = 26
	opQueryDerivationOutputNames  = 28
	opQueryPathFromHashPart       = 29
	opQuerySubstitutablePathInfos = 30
	opQueryValidPaths             = 31
	opQuerySubstitutablePaths     = 32
	opQueryValidDerivers          = 33
	opOptimiseStore               = 34
	opVerifyStore                 = 35
	opBuildDerivation             = 36
	opAddSignatures               = 37
	opNarFromPath                 = 38
	opAddToStoreNar               = 39
	opQueryMissing                = 40
	opQueryDerivationOutputMap    = 41
	opRegisterDrvOutput           = 42
	opQueryRealisation            = 43
	opAddMultipleToStore          = 44
	opAddBuildLog                 = 45
	opBuildPathsWithResults       = 46
	opAddPermRoot                 = 47
)

// BuildResult status codes that matter here.
const (
	buildAlreadyValid  = 2
	buildMiscFailure   = 9
	buildNoSubstituter = 14
)

func minor(v uint64) uint64 { return v & 0xff }

// writePathInfo writes a ValidPathInfo: with the path first (withPath),
// and the fields of format 16 and later when v16.
func writePathInfo(w *wireWriter, info *pathinfo.Info, withPath, v16 bool) {
	if withPath {
		w.String(info.StorePath)
	}
	w.String(info.Deriver)
	w.String(info.NarHash.Hex())
	w.Strings(info.References)
	w.Uint64(uint64(info.RegistrationTime))
	w.Uint64(info.NarSize)
	if v16 {
		w.Bool(false) // ultimate: built here, which nothing is
		w.Strings(info.Sigs)
		w.String(info.CA)
	}
}

// readPathInfo reads a ValidPathInfo as writePathInfo writes it: what a
// server answers to QueryPathInfo, and what a client sends with a NAR. A
// bad value (the NarHash) is an error that comes with the info, the
// stream past its end, so a server can answer it and go on; a read error
// comes alone.
func readPathInfo(r *wireReader, withPath, v16 bool) (*pathinfo.Info, error) {
	info := &pathinfo.Info{}
	var err error
	if withPath {
		if info.StorePath, err = r.String(); err != nil {
			return nil, err
		}
	}
	if info.Deriver, err = r.String(); err != nil {
		return nil, err
	}
	h, err := r.String()
	if err != nil {
		return nil, err
	}
	if info.References, err = r.Strings(); err != nil {
		return nil, err
	}
	regTime, err := r.Uint64()
	if err != nil {
		return nil, err
	}
	info.RegistrationTime = int64(regTime)
	if info.NarSize, err = r.Uint64(); err != nil {
		return nil, err
	}
	if v16 {
		if _, err = r.Uint64(); err != nil { // ultimate: the sender cannot make us trust it
			return nil, err
		}
		if info.Sigs, err = r.Strings(); err != nil {
			return nil, err
		}
		if info.CA, err = r.String(); err != nil {
			return nil, err
		}
	}
	if info.NarHash, err = storepath.ParseNarHash(h); err != nil {
		return info, clientErr("path '%s': %v", info.StorePath, err)
	}
	return info, nil
}

// readNAR reads a NAR to its end, which only parsing it finds: the
// protocol sends some NARs without a length.
func readNAR(r io.Reader) error {
	nr := nar.NewReader(r)
	for {
		if _, err := nr.Next(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}
