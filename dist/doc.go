// Package dist holds the files that run a node as a service: a hardened
// systemd unit with its system user and sample config (systemd/), a NixOS
// module (nixos/) and a Guix System service (guix/). It has no Go code.
//
// Its test checks them with what this machine has: systemd-analyze verify
// for the unit; nix-instantiate for the module, evaluated against a stub of
// the few lib functions it uses (nixos/check.nix), since no nixpkgs is
// reachable offline; plain Guile for the Guix file (guix/check.scm), since
// Guix is not installed. Each check then starts the real node with the
// command line and config file the file makes.
package dist
