"""The harness's Nix runs with tests/nix/nix.conf and nothing of the host's configuration.

Debian's Nix turns its build sandbox on wherever the kernel allows user namespaces, and the
test derivations (builder /bin/sh) cannot build inside it. Each case below puts a config
that requests the sandbox where a harness could inherit it, shows that this config really
breaks a plain Nix build on this machine (the control), then builds the fixture closure
with the harness's environment made from that same environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import NIX_CONF_DIR, Nix, build_closure, host_env, nix_env, run

# What a host may say. `sandbox-fallback = false` makes Nix fail where the kernel cannot
# sandbox instead of quietly building without it, and an empty `sandbox-paths` leaves no
# sandbox shell a host might provide, so the control fails on every kind of machine. The
# last two lines make sure it fails because of the sandbox, not for want of a nixbld
# group or of network.
HOSTILE_CONF = """\
sandbox = true
sandbox-fallback = false
sandbox-paths =
build-users-group =
substituters =
"""

# How a sandboxed build of the fixtures fails: the sandbox started and has no /bin/sh;
# the kernel lacks the namespaces ("... required for sandboxing"); or the sandbox could
# not be set up at all ("unable to start build process", seen inside a user namespace).
SANDBOX_FAILURES = ("executing '/bin/sh'", "sandboxing", "unable to start build process")


def place_hostile_config(where: str, tmp: Path) -> dict:
    """An environment whose Nix reads HOSTILE_CONF from `where` and no other configuration
    (not the real host's either, so the control fails for the one reason it tests)."""
    home = tmp / "host-home"
    empty = tmp / "empty"
    empty.mkdir()
    env = host_env()
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_CONFIG_DIRS=str(empty), NIX_CONF_DIR=str(empty))

    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HOSTILE_CONF)
        return path

    if where == "system nix.conf":  # stands for /etc/nix/nix.conf, which a test must not write
        env["NIX_CONF_DIR"] = str(write(tmp / "etc-nix" / "nix.conf").parent)
    elif where == "user nix.conf":
        write(home / ".config" / "nix" / "nix.conf")
    elif where == "XDG_CONFIG_DIRS":
        env["XDG_CONFIG_DIRS"] = str(write(tmp / "xdg" / "nix" / "nix.conf").parents[1])
    elif where == "NIX_USER_CONF_FILES":
        env["NIX_USER_CONF_FILES"] = str(write(tmp / "user.conf"))
    elif where == "NIX_CONFIG":
        env["NIX_CONFIG"] = HOSTILE_CONF
    else:
        raise ValueError(where)
    return env


@pytest.mark.parametrize("where", ["system nix.conf", "user nix.conf", "XDG_CONFIG_DIRS", "NIX_USER_CONF_FILES",
                                   "NIX_CONFIG"])
def test_fixtures_build_whatever_the_host_config_says(where: str, tmp_path: Path):
    hostile = place_hostile_config(where, tmp_path)
    # Never built before, so the build really runs. (No word of SANDBOX_FAILURES in it:
    # derivation names appear in Nix's error messages.)
    salt = "-hostcfg-" + os.urandom(6).hex()

    # Control: Nix with the host's view fails to build the fixtures, because of the sandbox.
    with pytest.raises(AssertionError) as failed:
        build_closure(Nix(hostile), salt)
    assert any(reason in str(failed.value) for reason in SANDBOX_FAILURES), str(failed.value)

    # The harness, handed that same environment, builds them.
    closure = build_closure(Nix(nix_env(tmp_path / "harness-home", base=hostile)), salt)
    assert all(Path(p).exists() for p in closure.paths)


def test_harness_nix_reads_only_its_own_config(tmp_path: Path):
    hostile = place_hostile_config("NIX_CONFIG", tmp_path)
    env = nix_env(tmp_path / "home", base=hostile)
    files = run(["nix-build", "--verbose", "--version"], env=env).stdout
    conf = NIX_CONF_DIR / "nix.conf"
    assert f"System configuration file: {conf}\n" in files
    assert f"User configuration files: {conf}\n" in files

    settings = dict(
        line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
        for line in run(["nix", "show-config"], env=env).stdout.splitlines()
    )
    assert settings["sandbox"] == "false"
    assert settings["substituters"] == ""
    assert settings["builders"] == ""
    assert settings["require-sigs"] == "true"
