// Package daemon speaks the Nix worker protocol (the nix-daemon's), as a
// server so that Nix clients use the node as a store over a unix socket or
// ssh-ng, and as a client so that imports read paths and NARs from a
// running nix-daemon.
//
// The protocol: after a handshake, the client sends operations (a u64 op
// code and its arguments) one at a time; the server answers each with log
// messages on the stderr channel, then STDERR_LAST and the reply, or
// STDERR_ERROR and no reply. Fields are gated on the negotiated minor
// version, min(client, server). We speak 1.21 (Nix 2.1) to 1.38 (Nix 2.24
// and later) and advertise no features.
package daemon

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
