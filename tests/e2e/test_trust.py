"""What a write token alone cannot do: make a Nix client accept, or lose, a path the
signing key did not vouch for. Each test plays the holder of a plain read,write token
and checks storage after every refusal."""

from __future__ import annotations

import json
import time
import os
from pathlib import Path

import pytest

from conftest import MK, Keys, Nix, Tokens, Worker, bearer, build_closure, request, run

CA_EXPR = r"""
{ salt }:
let
""" + MK + r"""
in {
  text = builtins.toFile "nixflare-ca-text-${salt}" "written by builtins.toFile ${salt}\n";
  fixed = derivation {
    name = "nixflare-ca-fixed-${salt}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${salt} > $out" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "${salt}\n";
  };
}
"""


def netrc_for(worker: Worker, tokens: Tokens, tmp_path: Path) -> Path:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {worker.host} login nix password {tokens.mint('read,write')}\n")
    return netrc


def narinfo_path(store_path: str) -> str:
    return f"/{Path(store_path).name[:32]}.narinfo"


def test_stock_nix_pushes_content_addressed_paths_unsigned(nix: Nix, worker: Worker, keys: Keys,
                                                          tokens: Tokens, tmp_path):
    salt = os.urandom(6).hex()
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "file").write_text(f"added recursively {salt}\n")
    (tmp_path / "flat").write_text(f"added flat {salt}\n")
    expr = ["-E", CA_EXPR, "--argstr", "salt", salt]
    paths = [
        # CA fixed:r:sha256 and flat fixed:sha256.
        run(["nix-store", "--add", str(tmp_path / "tree")], env=nix.env).stdout.strip(),
        run(["nix-store", "--add-fixed", "sha256", str(tmp_path / "flat")], env=nix.env).stdout.strip(),
        # A fixed-output derivation (flat) and builtins.toFile (text:sha256).
        run(["nix-build", "--no-out-link", *expr, "-A", "fixed"], env=nix.env).stdout.strip(),
        json.loads(run(["nix-instantiate", "--eval", "--read-write-mode", "--json", *expr, "-A", "text"],
                       env=nix.env).stdout),
    ]
    assert all(p.startswith("/nix/store/") for p in paths), paths
    # No secret-key: the narinfos Nix uploads carry no signature, only their CA.
    netrc = netrc_for(worker, tokens, tmp_path)
    nix("copy", "--option", "netrc-file", str(netrc), "--to", f"{worker.url}?compression=zstd", *paths)
    for path in paths:
        status, _, body = request(worker, "GET", narinfo_path(path))
        assert status == 200, (path, body)
        assert b"\nCA: " in body and b"\nSig: " not in body, body
    # A client that requires signatures still takes them: Nix recomputes each path.
    store = tmp_path / "fresh-store"
    nix("copy", "--from", worker.url, "--to", str(store), "--option", "trusted-public-keys", keys.public,
        "--option", "require-sigs", "true", *paths)
    for path in paths:
        assert (store / Path(path).relative_to("/")).exists(), path


@pytest.fixture(scope="module")
def unsigned_leaf(nix: Nix, keys: Keys, worker: Worker, tokens: Tokens, tmp_path_factory):
    """An input-addressed path with its NAR on the cache: its narinfo as Nix writes it
    unsigned, and signed with the trusted key."""
    closure = build_closure(nix, salt="-trust-" + os.urandom(6).hex())
    leaf = next(p for p in closure.paths if "-leaf-" in p)
    plain, signed = tmp_path_factory.mktemp("unsigned"), tmp_path_factory.mktemp("signed")
    nix("copy", "--to", f"file://{plain}?compression=xz", leaf)
    nix("copy", "--to", f"file://{signed}?secret-key={keys.secret_file}&compression=xz", leaf)
    name = narinfo_path(leaf)[1:]
    text = (plain / name).read_text()
    url = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("URL: "))
    status, _, body = request(worker, "PUT", "/" + url, bearer(tokens.mint()), (plain / url).read_bytes())
    assert status in (200, 201), body
    return "/" + name, text, (signed / name).read_text()


@pytest.mark.parametrize(
    "ca, reason",
    [
        ("x", b"narinfo CA"),
        ("fixed:r:sha256:" + "0" * 52, b"does not make its store path"),
        # The path's own NarHash as a recursive CA: well-formed, still not its path.
        ("NARHASH", b"does not make its store path"),
        ("text:sha256:" + "1" * 52, b"does not make its store path"),
    ],
)
def test_a_ca_field_alone_proves_nothing(worker: Worker, tokens: Tokens, unsigned_leaf, ca, reason):
    path, unsigned, signed = unsigned_leaf
    nar_hash = next(line.split(": ", 1)[1] for line in unsigned.splitlines() if line.startswith("NarHash: "))
    forged = unsigned + f"CA: {ca.replace('NARHASH', 'fixed:r:' + nar_hash)}\n"
    status, _, body = request(worker, "PUT", path, bearer(tokens.mint()), forged.encode())
    assert (status, reason in body) == (400, True), body
    assert request(worker, "GET", path)[0] == 404, "nothing published"


def test_a_refused_squat_leaves_the_path_to_its_signed_narinfo(worker: Worker, tokens: Tokens, unsigned_leaf):
    path, unsigned, signed = unsigned_leaf
    squat = unsigned + "CA: fixed:r:sha256:" + "0" * 52 + "\n"
    assert request(worker, "PUT", path, bearer(tokens.mint()), squat.encode())[0] == 400
    status, _, body = request(worker, "PUT", path, bearer(tokens.mint()), signed.encode())
    assert status == 201, body
    assert request(worker, "GET", path)[2] == signed.encode()


def race(worker: Worker, path: str, token: str, bodies: list[bytes]) -> list[int]:
    """PUTs each body to `path` from its own thread, released at the same moment."""
    import threading

    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = [0] * len(bodies)

    def put(i: int) -> None:
        barrier.wait()
        statuses[i] = request(worker, "PUT", path, bearer(token), bodies[i])[0]

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


RACES = 8


def test_racing_different_narinfos_publish_exactly_one(worker: Worker, tokens: Tokens, unsigned_leaf):
    path, _, signed = unsigned_leaf
    # Both pass every check: unknown fields are not signed.
    bodies = [signed.encode(), (signed + "X-Other: 1\n").encode()]
    writer, deleter = tokens.mint("read,write"), tokens.mint("read,delete")
    for attempt in range(RACES):
        request(worker, "DELETE", path, bearer(deleter))
        statuses = race(worker, path, writer, bodies)
        assert sorted(statuses) == [201, 409], (attempt, statuses)
        stored = request(worker, "GET", path)[2]
        assert stored == bodies[statuses.index(201)], attempt


# Two different bodies for the same side file: a NAR listing and a build log.
SIDE_FILES = {
    "listing": (b'{"version":1,"root":{"type":"regular","size":1}}', b'{"version":1,"root":{"type":"regular","size":2}}'),
    "log": (b"one build log\n", b"another build log\n"),
}


def side_file_path(kind: str, tag: str) -> str:
    """A fresh path of that kind (nix32 digits only)."""
    digits = "".join("0123456789abcdfghijklmnpqrsvwxyz"[b % 32] for b in os.urandom(32))
    return {"listing": f"/{digits}.ls", "log": f"/log/{digits}-{tag}.drv"}[kind]


@pytest.mark.parametrize("kind", ["listing", "log"])
def test_racing_different_side_files_store_exactly_one(worker: Worker, tokens: Tokens, kind):
    writer = tokens.mint("read,write")
    bodies = list(SIDE_FILES[kind])
    for attempt in range(RACES):
        path = side_file_path(kind, "race")
        statuses = race(worker, path, writer, bodies)
        # The loser hears 409 (a different one is stored), or 503 "send it again" (then
        # 409) when the winner stored a log between the loser's HEAD and its write.
        assert sorted(statuses) in ([201, 409], [201, 503]), (attempt, statuses)
        assert request(worker, "GET", path)[2] == bodies[statuses.index(201)], attempt


@pytest.mark.parametrize("kind", ["listing", "log"])
def test_side_files_follow_the_narinfo_rule(worker: Worker, tokens: Tokens, kind):
    target = side_file_path(kind, "rule")
    first, second = SIDE_FILES[kind]
    writer, overwriter = bearer(tokens.mint("read,write")), bearer(tokens.mint("read,write,overwrite"))
    assert request(worker, "PUT", target, writer, first)[0] == 201
    assert request(worker, "PUT", target, writer, first)[0] == 200, "the same bytes again"
    status, _, body = request(worker, "PUT", target, writer, second)
    assert (status, b"overwrite" in body) == (409, True), body
    assert request(worker, "GET", target)[2] == first, "unchanged by the refusal"
    assert request(worker, "PUT", target, overwriter, second)[0] == 201
    assert request(worker, "GET", target)[2] == second


REALISATION_EXPR = r"""
{ salt }:
derivation {
  name = "nixflare-realisation-${salt}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo ${salt} > $out" ];
  __contentAddressed = true;
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
}
"""


def ca_derivation(nix: Nix, tmp_path: Path, *, sign_with: Path | None) -> tuple[Path, dict]:
    """Builds a fresh content-addressed derivation (its realisation signed by the local
    store when `sign_with` is a key) and copies it to a file cache; returns the cache
    and the realisation Nix wrote."""
    expr = tmp_path / "ca.nix"
    expr.write_text(REALISATION_EXPR)
    salt = os.urandom(6).hex()
    options = ["--option", "extra-experimental-features", "ca-derivations"]
    if sign_with:
        options += ["--option", "secret-key-files", str(sign_with)]
    run(["nix-build", "--no-out-link", str(expr), "--argstr", "salt", salt, *options], env=nix.env)
    cache = tmp_path / "cache"
    nix("copy", *options, "--to", f"file://{cache}?compression=zstd", "-f", str(expr), "--argstr", "salt", salt)
    (doi,) = (cache / "realisations").iterdir()
    return cache, {"path": "/realisations/" + doi.name, "text": doi.read_text()}


def test_stock_nix_cannot_push_an_unsigned_realisation(nix: Nix, worker: Worker, tokens: Tokens, tmp_path):
    cache, realisation = ca_derivation(nix, tmp_path, sign_with=None)
    assert '"signatures":[]' in realisation["text"]
    status, _, body = request(worker, "PUT", realisation["path"], bearer(tokens.mint()), realisation["text"].encode())
    assert (status, b"no realisation signature verifies" in body) == (400, True), body
    assert request(worker, "GET", realisation["path"])[0] == 404


def test_a_signed_realisation_publishes_and_cannot_be_bent(nix: Nix, worker: Worker, keys: Keys,
                                                          tokens: Tokens, tmp_path):
    cache, realisation = ca_derivation(nix, tmp_path, sign_with=keys.secret_file)
    path, text = realisation["path"], realisation["text"]
    out = json.loads(text)["outPath"]
    writer = bearer(tokens.mint())
    # The signature covers the output path: pointing it elsewhere breaks it.
    bent = text.replace(out, "0" * 32 + "-evil")
    assert request(worker, "PUT", path, writer, bent.encode())[0] == 400
    # Under another id (another derivation's), the same body is refused too.
    other = path.replace(path[len("/realisations/sha256:"):][:8], "00000000")
    assert request(worker, "PUT", other, writer, text.encode())[0] == 400
    assert request(worker, "GET", path)[0] == 404
    assert request(worker, "PUT", path, writer, text.encode())[0] == 201
    assert request(worker, "GET", path)[2] == text.encode()


def sign_fingerprint(secret_file: Path, fingerprint: str) -> tuple[str, str]:
    """(key name, base64 signature) with a Nix secret key file."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    name, data = secret_file.read_text().strip().split(":", 1)
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(data)[:32])
    return name, base64.b64encode(key.sign(fingerprint.encode())).decode()


def test_build_trace_entries_need_a_trusted_signature(worker: Worker, keys: Keys, tokens: Tokens):
    drv, out = "1" * 32 + "-trace.drv", "2" * 32 + "-trace"
    path = f"/build-trace-v2/{drv}/out.doi"
    fingerprint = f'{{"key":{{"drvPath":"{drv}","outputName":"out"}},"value":{{"outPath":"{out}"}}}}'
    writer = bearer(tokens.mint())
    for secret, expected in [(keys.wrong_secret_file, 400), (keys.secret_file, 201)]:
        name, sig = sign_fingerprint(secret, fingerprint)
        body = json.dumps({"outPath": out, "signatures": [{"keyName": name, "sig": sig}]}).encode()
        status, _, reply = request(worker, "PUT", path, writer, body)
        assert status == expected, reply
    unsigned = json.dumps({"outPath": out, "signatures": []}).encode()
    assert request(worker, "PUT", path.replace("/out.doi", "/dev.doi"), writer, unsigned)[0] == 400


@pytest.mark.parametrize(
    "path, body",
    [
        ("/" + "3" * 32 + ".ls", b'{"anything": "at all"}'),
        ("/" + "3" * 32 + ".ls", b'{"version":1,"root":{"type":"directory","entries":{"..":{"type":"regular","size":1}}}}'),
        ("/debuginfo/" + "ab" * 20, b'{"archive":"https://elsewhere/x.nar","member":"lib/x.debug"}'),
        ("/debuginfo/" + "ab" * 20 + ".debug", b'{"archive":"../nar/' + b"1" * 52 + b'.nar.xz","member":"/etc/passwd"}'),
    ],
)
def test_side_files_must_have_the_shape_nix_writes(worker: Worker, tokens: Tokens, path, body):
    status, _, reply = request(worker, "PUT", path, bearer(tokens.mint()), body)
    assert status == 400, reply
    assert request(worker, "GET", path)[0] == 404


@pytest.mark.parametrize("signed", [True, False])
def test_stock_nix_copy_of_a_ca_derivation(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path, signed):
    expr = tmp_path / "ca.nix"
    expr.write_text(REALISATION_EXPR)
    salt = os.urandom(6).hex()
    options = ["--option", "extra-experimental-features", "ca-derivations"]
    build = options + (["--option", "secret-key-files", str(keys.secret_file)] if signed else [])
    run(["nix-build", "--no-out-link", str(expr), "--argstr", "salt", salt, *build], env=nix.env)
    netrc = netrc_for(worker, tokens, tmp_path)
    to = f"{worker.url}?secret-key={keys.secret_file}&compression=zstd"
    proc = nix("copy", *options, "--option", "netrc-file", str(netrc), "--to", to,
               "-f", str(expr), "--argstr", "salt", salt, check=False)
    if signed:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and "no realisation signature verifies" in proc.stderr, proc.stderr


def test_a_narinfo_may_not_carry_endless_signatures(worker: Worker, tokens: Tokens, unsigned_leaf):
    path, _, signed = unsigned_leaf
    sig = next(line for line in signed.splitlines() if line.startswith("Sig: "))
    flooded = signed + (sig + "\n") * 16
    status, _, body = request(worker, "PUT", path, bearer(tokens.mint()), flooded.encode())
    assert (status, b"more than 16 Sig" in body) == (400, True), body


@pytest.fixture
def small_worker(keys: Keys, tokens: Tokens, tmp_path):
    """A worker of its own, for limits the shared one must not hit."""
    from conftest import running_worker

    with running_worker(tmp_path, {"PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public,
                                   "MAX_REQUEST_BYTES": str(16 << 20), "MAX_OPEN_UPLOADS": "3"}) as worker:
        yield worker


def test_open_multipart_uploads_are_bounded(small_worker: Worker, tokens: Tokens):
    writer = bearer(tokens.mint())
    from conftest import nix32_sha256

    names = [nix32_sha256(os.urandom(16)) for _ in range(4)]
    ids = []
    for name in names[:3]:
        status, _, body = request(small_worker, "POST", f"/_nixflare/uploads/nar/{name}.nar?uploads", writer)
        assert status == 201, body
        ids.append((name, json.loads(body)["uploadId"]))
    status, _, body = request(small_worker, "POST", f"/_nixflare/uploads/nar/{names[3]}.nar?uploads", writer)
    assert (status, b"3 multipart uploads are open" in body) == (429, True), body
    from urllib.parse import quote

    name, upload_id = ids[0]
    assert request(small_worker, "DELETE", f"/_nixflare/uploads/nar/{name}.nar?uploadId={quote(upload_id, safe='')}",
                   writer)[0] == 204
    assert request(small_worker, "POST", f"/_nixflare/uploads/nar/{names[3]}.nar?uploads", writer)[0] == 201


def test_a_key_may_not_sign_both_narinfos_and_tokens(keys: Keys, tokens: Tokens, tmp_path):
    """Refused as a misconfiguration: nothing is answered but the page and stored files."""
    from conftest import running_worker

    with running_worker(tmp_path, {"PUBLIC_KEYS": f"{keys.public} {tokens.public}",
                                   "TOKEN_PUBLIC_KEYS": tokens.public}, ready_path="/") as broken:
        assert request(broken, "GET", "/nix-cache-info")[0] == 500
        assert request(broken, "PUT", "/" + "4" * 32 + ".ls", bearer(tokens.mint()), b"{}")[0] == 500


CORPUS = Path(__file__).resolve().parents[2] / "src" / "core" / "nix" / "testdata" / "corpus"


def test_a_flat_ca_with_any_reference_is_refused(worker: Worker, tokens: Tokens):
    """Newer Nix throws on a flat content address with a reference, its own included:
    such a narinfo would break every client, so it is never published."""
    name = "cdmml30shnaws5d56ms01y2nw7a8hs5r"  # nix-store --add-fixed, in the corpus
    text = (CORPUS / "content-addressed" / f"{name}.narinfo").read_text()
    own = next(line for line in text.splitlines() if line.startswith("StorePath: ")).rsplit("/", 1)[1]
    self_referring = text.replace("References: \n", f"References: {own}\n")
    status, _, body = request(worker, "PUT", f"/{name}.narinfo", bearer(tokens.mint()), self_referring.encode())
    assert (status, b"cannot have references" in body) == (400, True), body
    assert request(worker, "GET", f"/{name}.narinfo")[0] == 404


def test_an_unsigned_ca_narinfo_cannot_claim_other_bytes(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens,
                                                        tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text(os.urandom(8).hex())
    path = run(["nix-store", "--add", str(tmp_path / "tree")], env=nix.env).stdout.strip()
    cache = tmp_path / "unsigned"
    nix("copy", "--to", f"file://{cache}?compression=none", path)
    name = narinfo_path(path)
    text = (cache / name[1:]).read_text()
    nar_hash = next(line for line in text.splitlines() if line.startswith("NarHash: "))
    writer = bearer(tokens.mint())
    # Garbage bytes, named honestly, claimed as the path's NAR: the CA pins the NAR hash.
    garbage = os.urandom(64)
    from conftest import nix32_sha256

    garbage_name = nix32_sha256(garbage)
    assert request(worker, "PUT", f"/nar/{garbage_name}.nar", writer, garbage)[0] in (200, 201)
    url = next(line for line in text.splitlines() if line.startswith("URL: "))
    file_hash = next(line for line in text.splitlines() if line.startswith("FileHash: "))
    file_size = next(line for line in text.splitlines() if line.startswith("FileSize: "))
    nar_size = next(line for line in text.splitlines() if line.startswith("NarSize: "))
    squat = (text.replace(url, f"URL: nar/{garbage_name}.nar").replace(file_hash, f"FileHash: sha256:{garbage_name}")
             .replace(nar_hash, f"NarHash: sha256:{garbage_name}").replace(file_size, f"FileSize: {len(garbage)}")
             .replace(nar_size, f"NarSize: {len(garbage)}"))
    status, _, body = request(worker, "PUT", name, writer, squat.encode())
    assert (status, b"NarHash is not the NAR hash its CA" in body) == (400, True), body
    assert request(worker, "GET", name)[0] == 404


def test_a_signed_narinfo_takes_a_ca_path_back(nix: Nix, worker: Worker, keys: Keys, tokens: Tokens, tmp_path):
    """Stock Nix publishes a content-addressed path unsigned; the narinfo signed by the
    cache's key replaces it with a plain write token (no overwrite needed)."""
    (tmp_path / "flat").write_text(os.urandom(8).hex())
    path = run(["nix-store", "--add-fixed", "sha256", str(tmp_path / "flat")], env=nix.env).stdout.strip()
    netrc = netrc_for(worker, tokens, tmp_path)
    nix("copy", "--option", "netrc-file", str(netrc), "--to", f"{worker.url}?compression=xz", path)
    name = narinfo_path(path)
    assert b"Sig: " not in request(worker, "GET", name)[2]
    signed_cache = tmp_path / "signed"
    nix("copy", "--to", f"file://{signed_cache}?secret-key={keys.secret_file}&compression=xz", path)
    signed = (signed_cache / name[1:]).read_text()
    assert request(worker, "PUT", name, bearer(tokens.mint("read,write")), signed.encode())[0] == 201
    assert request(worker, "GET", name)[2] == signed.encode()
    # A signed narinfo whose CA does not make its path is refused even so.
    wrong = signed.replace("CA: fixed:sha256:", "CA: fixed:r:sha256:")
    assert request(worker, "PUT", name, bearer(tokens.mint("read,write,overwrite")), wrong.encode())[0] == 400


def test_a_listing_with_endless_keys_is_refused_quickly(worker: Worker, tokens: Tokens):
    """The JSON reader checks duplicate keys in O(n log n) and counts values: a small
    gzip body that decodes to hundreds of thousands of keys costs the worker little."""
    import gzip

    keys = ",".join(f'"k{i}":0' for i in range(300_000))
    body = gzip.compress(f'{{"version":1,"root":{{"type":"regular","size":1}},{keys}}}'.encode())
    headers = dict(bearer(tokens.mint()), **{"Content-Encoding": "gzip"})
    started = time.monotonic()
    status, _, reply = request(worker, "PUT", "/" + "6" * 32 + ".ls", headers, body)
    elapsed = time.monotonic() - started
    # Keys Nix does not read are allowed (Nix ignores them too): stored, after one
    # reading of the whole document.
    assert status == 201, reply
    # Not a speed target (benches measure those): a reader quadratic in the keys would
    # take minutes here, where this one takes well under a second.
    assert elapsed < 10, f"{elapsed:.1f} s"
    assert request(worker, "GET", "/nix-cache-info")[0] == 200, "the worker still answers"
