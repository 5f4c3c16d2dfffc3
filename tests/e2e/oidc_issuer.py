"""A local OIDC issuer standing in for GitHub Actions' (token.actions.githubusercontent.com):
discovery and JWKS over https (its own test CA, which the worker under test is told to
trust through SSL_CERT_FILE), an RSA and a P-256 key, and GitHub's ID-token request
endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL`). Tests mint tokens with any header, claims and
key, including the ones a verifier must refuse."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID



def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_int(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA, a certificate for 127.0.0.1 it signed, and a trust bundle of the
    system's CAs plus this one."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nixflare e2e test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file, bundle = directory / "cert.pem", directory / "key.pem", directory / "trust.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    # The system's CAs too (where this system keeps them), so the worker can still reach
    # public hosts; the tests need only the test CA.
    system = Path(ssl.get_default_verify_paths().cafile or "/nonexistent")
    bundle.write_bytes((system.read_bytes() if system.is_file() else b"") + ca.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file, bundle


@dataclass
class Issuer:
    url: str  # the issuer: https://127.0.0.1:PORT
    trust_bundle: Path  # SSL_CERT_FILE for a process that must trust it
    request_token: str  # what ACTIONS_ID_TOKEN_REQUEST_TOKEN holds
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    # What the fake endpoints saw: paths fetched, token requests' audiences.
    fetches: list[str] = field(default_factory=list)
    token_requests: list[str] = field(default_factory=list)
    # Claims every token the request endpoint issues carries, and its lifetime.
    ci_claims: dict = field(default_factory=dict)
    ci_lifetime: int = 300
    # Seconds the JWKS endpoint waits before answering (a slow issuer).
    jwks_delay: float = 0
    servers: list = field(default_factory=list)
    # GitHub's ID-token request endpoint, served over plain http: nixflare's HTTP client
    # trusts the public roots only, and the runner names this URL (https on GitHub).
    request_base: str = ""

    RSA_KID = "rsa-1"
    EC_KID = "ec-1"

    @property
    def request_url(self) -> str:
        # GitHub's URL carries a query already; the audience is appended to it.
        return f"{self.request_base}/token?api-version=2.0"

    def jwks(self) -> dict:
        rsa_public = self.rsa_key.public_key().public_numbers()
        ec_public = self.ec_key.public_key().public_numbers()
        return {"keys": [
            {"kty": "RSA", "kid": self.RSA_KID, "use": "sig", "alg": "RS256",
             "n": b64url_int(rsa_public.n), "e": b64url_int(rsa_public.e)},
            {"kty": "EC", "kid": self.EC_KID, "use": "sig", "alg": "ES256", "crv": "P-256",
             "x": b64url(ec_public.x.to_bytes(32, "big")), "y": b64url(ec_public.y.to_bytes(32, "big"))},
        ]}

    def claims(self, audience: str, **overrides) -> dict:
        """GitHub-shaped claims for `owner/repo` on main, valid for five minutes."""
        now = int(time.time())
        claims = {"iss": self.url, "aud": audience,
                  "sub": "repo:owner/repo:ref:refs/heads/main", "repository": "owner/repo",
                  "ref": "refs/heads/main", "event_name": "push", "jti": f"{now}-{time.monotonic_ns()}",
                  "iat": now, "nbf": now, "exp": now + 300}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, claims: dict, *, alg: str = "RS256", kid: str | None = None,
             header: dict | None = None, signature: bytes | None = None) -> str:
        """A compact JWS. `alg` RS256 or ES256 signs with the issuer's keys; HS256 signs
        with the RSA public key's PEM as the HMAC secret (the classic confusion attack);
        `none` has no signature. `signature` replaces whatever was computed."""
        head = {"alg": alg, "typ": "JWT",
                "kid": kid or (self.EC_KID if alg == "ES256" else self.RSA_KID), **(header or {})}
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
        data = signing_input.encode()
        if alg == "RS256":
            sig = self.rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256":
            r, s = decode_dss_signature(self.ec_key.sign(data, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        elif alg == "HS256":
            pem = self.rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
            sig = hmac.new(pem, data, hashlib.sha256).digest()
        else:
            sig = b""
        return f"{signing_input}.{b64url(signature if signature is not None else sig)}"

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def start_issuer(directory: Path) -> Issuer:
    cert, key, bundle = _tls_files(directory)
    issuer = Issuer(url="", trust_bundle=bundle, request_token=secrets.token_urlsafe(32),
                    rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                    ec_key=ec.generate_private_key(ec.SECP256R1()))

    class Handler(http.server.BaseHTTPRequestHandler):
        # Keep-alive as real issuers do (workerd reuses connections; an HTTP/1.0 close
        # after each answer loses the next request on a pooled connection).
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path, _, query = self.path.partition("?")
            issuer.fetches.append(path)
            if path == "/.well-known/openid-configuration":
                return self.reply(200, {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"})
            if path == "/jwks":
                time.sleep(issuer.jwks_delay)
                return self.reply(200, issuer.jwks())
            if path == "/token":
                if self.headers.get("Authorization") != f"bearer {issuer.request_token}":
                    return self.reply(401, {"message": "bad request token"})
                params = urllib.parse.parse_qs(query)
                if params.get("api-version") != ["2.0"] or len(params.get("audience", [])) != 1:
                    return self.reply(400, {"message": f"bad query {query}"})
                audience = params["audience"][0]
                issuer.token_requests.append(audience)
                now = int(time.time())
                claims = issuer.claims(audience, exp=now + issuer.ci_lifetime, **issuer.ci_claims)
                return self.reply(200, {"count": 1, "value": issuer.mint(claims, alg="ES256")})
            return self.reply(404, {})

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (ConnectionError, ssl.SSLError):
                pass  # the worker gave up waiting (a slow-issuer test)

        def log_message(self, *args):
            pass

    tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.servers = [tls, plain]
    issuer.url = f"https://127.0.0.1:{tls.server_address[1]}"
    issuer.request_base = f"http://127.0.0.1:{plain.server_address[1]}"
    for server in issuer.servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return issuer
