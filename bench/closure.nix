# A closure of 421 small store paths for bench/run.sh closure: 10 layers of
# 42 paths, each referring to three paths of the layer below, and a top
# path referring to the last layer, so that a client that walks it asks
# for up to 42 narinfos at once, 11 times.
let
  layers = 10;
  width = 42;
  paths = builtins.genList (l: builtins.genList (j: mk l j) width) layers;
  below = l: j: builtins.elemAt (builtins.elemAt paths (l - 1)) (j - width * (j / width));
  refs = l: j: if l == 0 then "" else "${below l j} ${below l (j + 1)} ${below l (j + 7)}";
  mk = l: j: derivation {
    name = "p2pstore-bench-${toString l}-${toString j}";
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "echo ${toString l} ${toString j} ${refs l j} > $out" ];
  };
in derivation {
  name = "p2pstore-bench-top";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "echo ${toString (builtins.elemAt paths (layers - 1))} > $out" ];
}
