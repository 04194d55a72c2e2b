# Evaluates module.nix for one configuration without nixpkgs (none is
# reachable offline): a stub of the few lib functions and types the module
# uses, and of pkgs.writeText and pkgs.writeShellScript, whose results keep
# their text so that it can be read back. Not a module system: it fills the
# module's options from the configuration and their defaults, checks their
# types (an unknown option or a value of the wrong type throws, as NixOS
# would), and resolves mkIf and mkMerge in what the module defines.
#
#   nix-instantiate --eval --strict --json dist/nixos/check.nix \
#     --arg configuration '{ services.p2pstore = { enable = true; package = ...; }; }'
#
# dist_test.go runs it and checks what comes out.
{ configuration }:

let
  inherit (builtins) isAttrs isList isString isBool isInt all attrNames
    concatStringsSep elem filter foldl' hasAttr listToAttrs mapAttrs;

  mkType = name: check: extra: { _type = "type"; inherit name check; } // extra;

  types = rec {
    bool = mkType "bool" isBool { };
    str = mkType "str" isString { };
    int = mkType "int" isInt { };
    ints.unsigned = mkType "unsigned int" (x: isInt x && x >= 0) { };
    package = mkType "package" (x: (isAttrs x && x ? outPath) || isString x) { };
    anything = mkType "anything" (_: true) { };
    listOf = t: mkType "list of ${t.name}" (x: isList x && all t.check x) { };
    attrsOf = t: mkType "attribute set of ${t.name}" (x: isAttrs x && all t.check (builtins.attrValues x)) { };
    nullOr = t: mkType "null or ${t.name}" (x: x == null || t.check x) { };
    either = a: b: mkType "${a.name} or ${b.name}" (x: a.check x || b.check x) { };
    submodule = m: mkType "submodule" isAttrs { inherit (m) options; freeformType = m.freeformType or null; };
  };

  lib = {
    inherit types;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: lib.mkOption { type = types.bool; default = false; description = "Whether to enable ${name}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    optional = cond: x: if cond then [ x ] else [ ];
    inherit concatStringsSep;
  };

  # A built file: its store path when interpolated, its text when read.
  built = name: text: { outPath = "/nix/store/00000000000000000000000000000000-${name}"; inherit name text; };
  pkgs = {
    writeText = built;
    writeShellScript = name: text: built name "#!/bin/sh\n${text}";
  };

  isOption = x: isAttrs x && (x._type or null) == "option";

  # fill: the value of an option tree for the definitions defs at path.
  fill = path: options: defs:
    let
      unknown = filter (n: !(hasAttr n options)) (attrNames defs);
    in
    if unknown != [ ] then throw "The option `${concatStringsSep "." (path ++ [ (builtins.head unknown) ])}' does not exist."
    else mapAttrs (n: o: fillOne (path ++ [ n ]) o (defs.${n} or null) (hasAttr n defs)) options;

  fillOne = path: o: def: defined:
    let name = concatStringsSep "." path; in
    if !(isOption o) then fill path o (if defined then def else { })
    else if defined && (o.readOnly or false) then throw "The option `${name}' is read-only."
    else if !defined && !(o ? default) then throw "The option `${name}' is used but not defined."
    else typed name o.type (if defined then def else o.default);

  # typed: v checked against t; a submodule's value filled like options.
  typed = name: t: v:
    if (t ? options) then
      let
        declared = filter (n: hasAttr n t.options) (attrNames v);
        free = removeAttrs v (attrNames t.options);
        freeOk = t.freeformType != null && t.freeformType.check free;
      in
      if free != { } && !freeOk then throw "The option `${name}.${builtins.head (attrNames free)}' does not exist."
      else free // fill [ name ] t.options (listToAttrs (map (n: { name = n; value = v.${n}; }) declared))
    else if t.check v then v
    else throw "The option `${name}' is not of type `${t.name}': ${builtins.toJSON v}";

  # resolve: what the module defines, with mkIf and mkMerge applied.
  resolve = x:
    if isAttrs x && (x._type or null) == "if" then (if x.condition then resolve x.content else { })
    else if isAttrs x && (x._type or null) == "merge" then foldl' merge { } (map resolve x.contents)
    else if isAttrs x && !(x ? outPath) then mapAttrs (_: resolve) x
    else x;

  merge = a: b:
    a // mapAttrs
      (n: v:
        if !(hasAttr n a) then v
        else if isAttrs v && isAttrs a.${n} && !(v ? outPath) then merge a.${n} v
        else if isList v && isList a.${n} then a.${n} ++ v
        else throw "The option `${n}' is defined twice.")
      b;

  module = import ./module.nix;
  evaluated = module { inherit config lib pkgs; };
  config = fill [ ] evaluated.options configuration;
  defined = resolve evaluated.config;

  svc = defined.systemd.services.p2pstore or null;
  etc = defined.environment.etc."p2pstore/config.yaml" or null;
in
{
  enabled = svc != null;
  configFile = if etc == null then null else etc.source.text;
  configPath = if etc == null then null else etc.source.outPath;
  execStart = if svc == null then null else svc.serviceConfig.ExecStart;
  execStartPre = if svc == null then null else map toString svc.serviceConfig.ExecStartPre;
  serviceConfig = if svc == null then null else removeAttrs svc.serviceConfig [ "ExecStart" "ExecStartPre" ];
  users = defined.users or null;
  firewall = defined.networking.firewall or { };
  nixSettings = defined.nix.settings or { };
}
