// Package daemon speaks the Nix worker protocol (the nix-daemon's), as a
// server so that Nix clients use the node as a store over a unix socket or
// ssh-ng, and as a client so that imports read paths and NARs from a
// running nix-daemon. It speaks Guix's dialect too (guix.go), on a socket
// of its own, as server and client: Guix tooling queries and exports the
// node's Guix paths, and imports read paths from a guix-daemon.
//
// The protocol: after a handshake, the client sends operations (a u64 op
// code and its arguments) one at a time; the server answers each with log
// messages on the stderr channel, then STDERR_LAST and the reply, or
// STDERR_ERROR and no reply. Fields are gated on the negotiated minor
// version, min(client, server). We speak 1.21 (Nix 2.1) to 1.38 (Nix 2.24
// and later) and advertise no features.
//
// The server is a store without builders that never deletes a path: it
// answers queries and adds paths through Store, and answers every other op
// the same whatever the store holds, from one table (accepted, nothing, or
// refused with the reason). An op's arguments are read whole before it
// fails, so that a refused op leaves the connection usable; only input the
// server cannot follow (an unknown op, a bad length or argument) closes
// it. The client that connects is trusted: the socket is the node owner's.
//
// A client gets little of the server's memory and time: the strings and
// lists of one request are bounded together (MaxOpBytes, MaxOpItems), NARs
// and framed data stream through, and a length over a limit is refused at
// once with STDERR_ERROR, then the connection is closed since the rest of
// the request cannot be followed. A connection is dropped when a request
// makes no progress for RequestTimeout, or after IdleTimeout between
// requests (hours: Nix clients keep connections open while idle).
//
// Files: server.go (connections, handshake, dispatch, errors), guix.go
// (Guix's dialect: its handshake, ops and exports, server and client), ops_query.go
// (queries), ops_build.go (requests to make paths valid), ops_add.go
// (adding paths), ops_fixed.go (the table of fixed answers), limits.go
// (size and time limits), wire.go (encoding), proto.go (constants and
// ValidPathInfo), client.go (the client).
package daemon
