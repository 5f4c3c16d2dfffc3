# `mk name script`: a derivation that runs a shell script with the host's /bin/sh and
# coreutils (no nixpkgs here). tests/nix/nix.conf turns the build sandbox off for it.
# Used by the e2e tests, the benchmarks and scripts/make-corpus.sh.
name: script:
derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" script ];
  PATH = "/usr/bin:/bin";
}
