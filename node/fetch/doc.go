// Package fetch gets a store path the node lacks from the sources that
// hold it, checks every object as it arrives, and streams the path's NAR
// to clients while it does.
//
//  1. Find sources (Finder: peers connected now, then those the DHT names)
//     and ask them for the path's record; keep only records a trusted key
//     signed, noting whether the tree's root and chunk lists are bound to
//     the path by a trusted signature too (transfer.RootFingerprint). A
//     Guix path's record is kept when a trusted Guix key signed its Guix
//     narinfo (Config.GuixTrusted); its tree is then checked against that
//     NarHash, Nix keys vouching for nothing of Guix's.
//  2. In a Job, in the background: get the directory tree (checked as a
//     Merkle walk from the root) and the chunk lists of the files the node
//     lacks, then the chunks it lacks, in NAR order, from all sources at
//     once (scheduler.go), each checked against its digest as it arrives,
//     and committed in batches (committer.go).
//  3. Unless the chunk lists match their signed digest (then every byte
//     was checked on arrival), check each file of several chunks against
//     its digest, and, unless a trusted key signed the tree's root, the
//     whole NAR against the signed NarHash and NarSize (check.go); only
//     then is the path recorded (Index), and then announced (Publisher).
//
// A NAR asked for while its job runs is rendered from the job as its
// chunks arrive (render.go), taking the chunks the download has just
// decoded (handoff.go) rather than waiting for their commit. A source that
// sends bad data, or nothing for the stall timeout, is penalised (ignored
// for a while) and its share of the work goes to the others; a batch one
// source holds much longer than batches take is asked of another too, so
// a slow or stalled source does not hold up the rest. Concurrent requests
// for one path share one job.
//
// Start finds the record and starts the job at once; Find and Begin do it
// in two steps for a caller that races the peers against sources of its
// own and starts only the winner's job (find.go).
//
// Seams. The package declares what it needs and nothing more: a Source of
// records, trees, chunk lists and chunks (a peer over the transfer
// protocol is one, in package node), a Finder of sources, the Store it
// writes (a *castore.Store), the Index that makes a path valid, and the
// Publisher that shares and announces it; Config.Reserve, when set, is
// told the bytes a job is about to download, so that the node's disk
// limit can make room for them first; Config.Done, when set, is told how
// each job ended (the bytes each source sent, the time it took), so that
// the node logs one line per fetch and counts it. It speaks the transfer
// protocol's vocabulary (transfer.BlobRef, ErrNotFound, ErrBadData,
// ErrStalled), which any Source maps its errors to.
package fetch
