# The generation update of the delta corpus (gen_update's store, benches/README.md) built by
# Nix: one derivation per corpus tree (builder /bin/sh copying the unpacked Debian package),
# references between items written into `ferry-refs` files as gen_update does (LibreOffice
# names the kernel item, Firefox both), and a system naming all three with a
# bin/switch-to-configuration for `ferry deploy`. Built into a chroot store by
# benches/src/bin/nix_host_bench.rs (`nix-build --store ROOT --argstr gen 1|2 --argstr corpus DIR`).
{ gen, corpus }:
let
  side = if gen == "1" then "old" else "new";
  v = a: b: if gen == "1" then a else b;
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
  };
  item = name: tree: refs: mk name ''
    cp -a ${corpus}/tree/${tree}-${side} $out
    chmod u+w $out
    printf '%s\n' ${toString refs} > $out/ferry-refs
  '';
  linux = item "linux-image-${v "6.1.176" "6.1.192"}" "linux" [ ];
  lo = item "libreoffice-core-${v "7.4.7-deb12u13" "7.4.7-deb12u14"}" "lo" [ linux ];
  ff = item "firefox-esr-${v "140.12.0esr" "153.8.0esr"}" "ff" [ linux lo ];
in mk "system-${gen}" ''
  mkdir -p $out/bin
  printf '%s\n' ${linux} ${lo} ${ff} > $out/ferry-refs
  printf '#!/bin/sh\necho "$0 $1" >> "$FERRY_ROOT/switch.log"\n' > $out/bin/switch-to-configuration
  chmod +x $out/bin/switch-to-configuration
''
