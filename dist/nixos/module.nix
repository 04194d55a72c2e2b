# NixOS module for a p2pstore node: services.p2pstore.
#
#   imports = [ ./dist/nixos/module.nix ];
#   services.p2pstore = {
#     enable = true;
#     package = p2pstore;          # a build of cmd/p2pstore
#     openFirewall = true;         # peers reach the p2p ports
#     substituter.enable = true;   # this machine's Nix substitutes from the node
#     settings.trust.public_keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
#   };
#
# settings is written to /etc/p2pstore/config.yaml, the default config path
# that `p2pstore serve` and the commands (status, import, ...) read, so
# `p2pstore status` works for root and for members of the group p2pstore.
# The service runs as the system user p2pstore, hardened as
# dist/systemd/p2pstore.service is; the store mount (mount.dir) does not
# work under it (FUSE needs /dev/fuse and mount rights it lacks).
#
# Where Guix differs (dist/guix/p2pstore.scm is the Guix System service):
#   - the store is /gnu/store (settings.store_dir), and the node does not
#     read Guix's database: local.share shares a Nix store only;
#   - Guix clients list the node in guix-daemon's --substitute-urls instead
#     of nix.settings.substituters, and authorize a key with
#     `guix archive --authorize` (Guix's key format) instead of
#     trusted-public-keys; an unauthorized server is used for the paths
#     whose narinfo matches one from an authorized server;
#   - the service is a Shepherd service, the state dir is made by an
#     activation snippet, and no firewall is opened for you.
# Guix clients are not served yet: the node speaks Nix's narinfos and
# signatures today.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types literalExpression;

  cfg = config.services.p2pstore;

  stateDir = "/var/lib/p2pstore";
  socketPath = "/run/p2pstore/daemon.sock";
  signKeyFile = if cfg.signKeyFile == null then "${stateDir}/signing.key" else cfg.signKeyFile;

  # JSON is YAML, so builtins.toJSON writes the YAML config file: no YAML
  # generator to build.
  configFile = pkgs.writeText "p2pstore-config.yaml" (builtins.toJSON cfg.settings);

  # A value of the config file; freeform keys take any of them.
  settingsValue = types.anything;

  # A section of settings (http, p2p, ...): its main keys typed, any other
  # key the node knows taken as it is.
  section = description: options: mkOption {
    type = types.submodule { freeformType = types.attrsOf settingsValue; inherit options; };
    default = { };
    inherit description;
  };

  # The TCP and UDP ports of p2p.listen's multiaddresses (port 0, a random
  # one, cannot be opened ahead).
  listenPorts = proto: builtins.filter (p: p != 0) (map
    (a:
      let m = builtins.match "/(ip4|ip6)/[^/]+/${proto}/([0-9]+)(/.*)?" a;
      in if m == null then 0 else builtins.fromJSON (builtins.elemAt m 1))
    cfg.settings.p2p.listen);

  # http.listen as HOST and PORT.
  httpHostPort = builtins.match "(.*):([0-9]+)" cfg.settings.http.listen;
  httpHost = builtins.elemAt httpHostPort 0;
  httpPort = builtins.fromJSON (builtins.elemAt httpHostPort 1);
  # The URL this machine's Nix reaches the node at: a node listening on
  # every address is reached on loopback.
  localHost =
    if httpHost == "0.0.0.0" || httpHost == "" then "127.0.0.1"
    else if httpHost == "[::]" then "[::1]"
    else httpHost;

  keygen = pkgs.writeShellScript "p2pstore-keygen" ''
    [ -e ${signKeyFile} ] || exec ${cfg.package}/bin/p2pstore keygen --name "$1" --out ${signKeyFile}
  '';
in
{
  options.services.p2pstore = {
    enable = mkEnableOption "the p2pstore peer-to-peer substitution node";

    package = mkOption {
      type = types.package;
      description = "The p2pstore package: a build of the repository's cmd/p2pstore (its bin/p2pstore is run and put on the PATH).";
    };

    settings = mkOption {
      description = ''
        The node's settings, written to /etc/p2pstore/config.yaml. Keys as
        `p2pstore serve --help` lists them (nested: http.listen is
        settings.http.listen); the main ones are typed here, any other is
        taken as it is. data_dir, daemon.socket and sign.key_file belong to
        the service (see signKeyFile).
      '';
      default = { };
      type = types.submodule {
        freeformType = types.attrsOf settingsValue;
        options = {
          http = section "The HTTP binary cache." {
            listen = mkOption {
              type = types.str;
              default = "127.0.0.1:7420";
              description = "HOST:PORT of the binary cache. 127.0.0.1:7420 serves this machine; 0.0.0.0:7420 the LAN (see openFirewallHTTP).";
            };
          };
          p2p = section "The peer-to-peer side." {
            listen = mkOption {
              type = types.listOf types.str;
              default = [ "/ip4/0.0.0.0/tcp/7421" "/ip4/0.0.0.0/udp/7421/quic-v1" ];
              description = "libp2p listen multiaddresses; openFirewall opens their TCP and UDP ports.";
            };
            bootstrap = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "/ip4/203.0.113.7/tcp/7421/p2p/12D3KooW..." ];
              description = "Nodes to join beyond the LAN: the address with /p2p/PEERID that their `p2pstore status` prints.";
            };
            mdns = mkOption {
              type = types.bool;
              default = true;
              description = "Find nodes on the LAN by mDNS (openFirewall then opens UDP 5353).";
            };
          };
          trust = section "Whose signatures the node takes paths on." {
            public_keys = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
              description = "Nix public keys (NAME:BASE64) whose signatures make a path trusted: taken from peers and shared with them.";
            };
          };
          upstream = section "Binary caches to pull through from." {
            substituters = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "https://cache.nixos.org" ];
              description = "Binary caches asked, beside the peers, for a path the node lacks.";
            };
            public_keys = mkOption {
              type = types.listOf types.str;
              default = [ ];
              description = "Keys whose signatures make a path trusted, as trust.public_keys; pulled paths need one.";
            };
          };
          storage = section "The node's store." {
            max_bytes = mkOption {
              type = types.either types.ints.unsigned types.str;
              default = 0;
              example = "50G";
              description = "Stored bytes to stay under (k/M/G/T suffixes) by removing the least recently used unpinned paths; 0 for no limit.";
            };
          };
          local = section "This machine's Nix store." {
            share = mkOption {
              type = types.bool;
              default = true;
              description = "Share the signed paths of this machine's Nix store without importing them.";
            };
          };
          daemon = section "The daemon socket." {
            socket = mkOption {
              type = types.str;
              default = socketPath;
              readOnly = true;
              description = "Where the service puts the daemon socket; written to the config file so that the commands find the node.";
            };
            socket_group = mkOption {
              type = types.nullOr types.str;
              default = "p2pstore";
              description = "Group given the socket (mode 0660): its members may use the node's commands and `nix copy --to unix://...`. null: root and the node only.";
            };
          };
        };
      };
    };

    signKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/p2pstore-signing.key";
      description = ''
        The Nix secret key the node signs imported paths with (readable by
        the user p2pstore; keep it out of the Nix store). null: the service
        makes one in ${stateDir} on first start, named after the host;
        `p2pstore status` prints its public key.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP and UDP ports of settings.p2p.listen, and UDP 5353 for mDNS when settings.p2p.mdns is on.";
    };

    openFirewallHTTP = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP port of settings.http.listen, for other machines' Nix clients (with http.listen on a LAN address).";
    };

    substituter = {
      enable = mkEnableOption "the node as a substituter of this machine's Nix (nix.settings.substituters; the node advertises priority 30, ahead of cache.nixos.org's 40)";
      publicKey = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "myhost-1:uubPDALvC346A5s1Qum1xhiIqx4Lif64aacAJtvm+jQ=";
        description = ''
          The node's own public key (`p2pstore status` prints it), trusted
          by this machine's Nix for the paths the node signs. The keys of
          settings.trust.public_keys and settings.upstream.public_keys are
          trusted too: the machine's Nix takes what the node takes.
        '';
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      users.users.p2pstore = {
        isSystemUser = true;
        group = "p2pstore";
        home = stateDir;
        description = "p2pstore node";
      };
      users.groups.p2pstore = { };

      environment.etc."p2pstore/config.yaml".source = configFile;
      environment.systemPackages = [ cfg.package ];

      systemd.services.p2pstore = {
        description = "p2pstore peer-to-peer substitution node";
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" "nix-daemon.socket" ];
        wants = [ "network-online.target" ];
        serviceConfig = {
          Type = "simple";
          User = "p2pstore";
          Group = "p2pstore";
          StateDirectory = "p2pstore";
          StateDirectoryMode = "0700";
          RuntimeDirectory = "p2pstore";
          RuntimeDirectoryMode = "0750";
          ExecStartPre = lib.optional (cfg.signKeyFile == null) "${keygen} %H-1";
          ExecStart = lib.concatStringsSep " " [
            "${cfg.package}/bin/p2pstore serve"
            "--config=${configFile}"
            "--data-dir=${stateDir}"
            "--daemon-socket=${socketPath}"
            "--sign-key-file=${signKeyFile}"
          ];
          Restart = "on-failure";
          RestartSec = "5s";
          TimeoutStopSec = "30s";
          LimitNOFILE = 65536;
          UMask = "0077";

          NoNewPrivileges = true;
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          RemoveIPC = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" ];
          SystemCallErrorNumber = "EPERM";
        };
      };
    }

    (mkIf cfg.openFirewall {
      networking.firewall.allowedTCPPorts = listenPorts "tcp";
      networking.firewall.allowedUDPPorts = listenPorts "udp" ++ lib.optional cfg.settings.p2p.mdns 5353;
    })

    (mkIf cfg.openFirewallHTTP {
      networking.firewall.allowedTCPPorts = [ httpPort ];
    })

    (mkIf cfg.substituter.enable {
      nix.settings.substituters = [ "http://${localHost}:${toString httpPort}" ];
      nix.settings.trusted-public-keys =
        lib.optional (cfg.substituter.publicKey != null) cfg.substituter.publicKey
        ++ cfg.settings.trust.public_keys
        ++ cfg.settings.upstream.public_keys;
    })
  ]);
}
