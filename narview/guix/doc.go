// Package guix reads, writes, signs and verifies Guix narinfos, and
// reads and writes Guix keys.
//
// Decisions, each as Guix and libgcrypt do it:
//   - Keys are S-expressions (package sexp): (public-key (ecc (curve
//     Ed25519) (q #..#))) and (private-key (ecc ... (d #..#))), written in
//     libgcrypt's advanced notation like `guix archive --generate-key`.
//     Keys match when their expressions do, as in Guix's ACL.
//   - Signatures are ECDSA over the Ed25519 curve, not EdDSA: Guix keys
//     carry no eddsa flag, so libgcrypt signs the SHA-256 shifted right to
//     the 253 bits of the group order, with an RFC 6979 nonce. Signing is
//     deterministic and gives libgcrypt's bytes.
//   - What is signed is the narinfo text up to its first "Signature:",
//     byte for byte, not a fingerprint; it must hold StorePath, NarHash
//     and References. Parse keeps that text (Signed) and Append writes it
//     back unchanged, so an upstream's narinfo passes on still verifying.
//   - The Signature field is 1;<host>;<base64 of the signature's
//     advanced text>, the text carrying the hash, r, s and the key.
//   - The writer follows guix publish since 2022: the normative fields,
//     Signature, then URL/Compression/FileSize for each compression,
//     unsigned so they can change. Older narinfos signed the URLs too;
//     SignedNARs says how many entries are inside Signed.
//   - Verify checks in Guix's order (signed fields, parse, trusted key,
//     hash, ECDSA) and says which failed; Equivalent is Guix's rule that
//     lets a client download from a server whose key it does not trust.
package guix
