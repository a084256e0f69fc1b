"""Hostile tokens: every one must be refused with the right kind, and nothing else may happen
(no exception other than AuthError, no connection to a URL the token names).

Each attack runs against the three shapes of key source (a static JWKS, a PEM public key, a
JWKS fetched from a real server on 127.0.0.1), and each group has a control that the same
setup accepts the honest token, so a refusal is the attack's doing.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from gatekeeper import ERROR_KINDS, AuthError, Issuer, Verifier
from gatekeeper.devserver import JWKS_PATH, IssuerServer
from gatekeeper.jws import check_signature, parse_compact

if TYPE_CHECKING:
    from conftest import Clock, Forge, Listener

EPOCH = 1_700_000_000.0
ISS = "https://victim.example"
KID = "victim-1"
Rejected = Callable[..., AuthError]


@dataclass(frozen=True)
class Victim:
    """The trusted issuer's RSA key, published as a JWKS and as PEM."""

    key: RSAKey

    @property
    def jwk(self) -> dict[str, Any]:
        return self.key.as_dict(private=False, kid=KID, alg="RS256", use="sig")

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    @property
    def pem(self) -> bytes:
        return self.key.as_pem(private=False)


@pytest.fixture(autouse=True)
def _at_epoch(clock: Clock) -> None:
    clock.set(EPOCH)


@pytest.fixture(scope="module")
def victim() -> Victim:
    return Victim(RSAKey.generate_key(2048))


@pytest.fixture(scope="module")
def attacker_key() -> RSAKey:
    return RSAKey.generate_key(2048)


def claims(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iss": ISS,
        "sub": "client-1",
        "aud": "api",
        "iat": int(EPOCH),
        "exp": int(EPOCH) + 300,
        "scope": "read",
    }
    for name, value in changes.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload


def header(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"alg": "RS256", "typ": "at+jwt", "kid": KID}
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


@pytest.fixture
def honest(forge: type[Forge], victim: Victim) -> Callable[..., str]:
    """A token signed by the victim's real key; keyword arguments change the claims."""

    def make(head: dict[str, Any] | None = None, **changes: Any) -> str:
        return forge.sign(head or header(), claims(**changes), victim.key)

    return make


@pytest.fixture(scope="module")
def victim_server(victim: Victim) -> Iterator[IssuerServer]:
    """A real server on 127.0.0.1 publishing the victim's JWKS."""
    with IssuerServer() as server:
        server.body = json.dumps(victim.jwks).encode()
        yield server


@pytest.fixture(params=["jwks", "public_key", "jwks_url"])
def source(request: pytest.FixtureRequest, victim: Victim) -> dict[str, Any]:
    """The victim issuer's key source, as Issuer options (plus the server for ``jwks_url``)."""
    if request.param == "jwks":
        return {"jwks": victim.jwks}
    if request.param == "public_key":
        return {"public_key": victim.pem}
    server: IssuerServer = request.getfixturevalue("victim_server")
    server.reset_counts()
    return {"jwks_url": server.jwks_url, "server": server}


@pytest.fixture
def verifier(source: dict[str, Any], clock: Clock) -> Verifier:
    options = {k: v for k, v in source.items() if k != "server"}
    return Verifier(issuer=ISS, audience="api", clock=clock, **options)


def test_control_honest_token_verifies(verifier: Verifier, honest: Callable[..., str]) -> None:
    claims_ = verifier.verify(honest())
    assert claims_["sub"] == "client-1"
    assert claims_.scopes == frozenset({"read"})


# -- alg "none" ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "with-signature"])
def test_alg_none_in_every_casing(
    forge: type[Forge],
    verifier: Verifier,
    honest: Callable[..., str],
    rejected: Rejected,
    alg: str,
    signed: bool,
) -> None:
    real = honest()
    signature = base64.urlsafe_b64decode(real.split(".")[2] + "==") if signed else b""
    token = forge.compact(header(alg=alg), claims(), signature)
    rejected(verifier, token, "invalid_token", "algorithm")
    # Also without a kid (so no key is "selected" at all) and with an empty third segment.
    rejected(verifier, forge.compact({"alg": alg}, claims()), "invalid_token", "algorithm")


def test_alg_none_is_refused_even_with_an_hmac_issuer(
    forge: type[Forge], clock: Clock, rejected: Rejected
) -> None:
    verifier = Verifier(issuer=ISS, audience="api", hmac_secret=b"s" * 64, clock=clock)
    assert verifier.verify(forge.sign({"alg": "HS256"}, claims(), b"s" * 64))["iss"] == ISS
    for alg in ("none", "NONE"):
        rejected(verifier, forge.compact({"alg": alg}, claims()), "invalid_token", "algorithm")


def test_alg_none_cannot_be_configured() -> None:
    for algs in (["none"], ["RS256", "None"], ["NONE"]):
        with pytest.raises(ValueError, match="not allowed"):
            Issuer(ISS, audience="api", jwks={"keys": []}, algorithms=algs)


# -- RS256 -> HS256 key confusion ---------------------------------------------------------------


def _confusion_secrets(victim: Victim) -> dict[str, bytes]:
    jwk = victim.jwk
    return {
        "pem": victim.pem,
        "pem-stripped": victim.pem.strip(),
        "pem-pkcs1": victim.key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ),
        "der": victim.key.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "jwks-json": json.dumps(victim.jwks).encode(),
        "n": base64.urlsafe_b64decode(jwk["n"] + "=="),
    }


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize(
    "secret", ["pem", "pem-stripped", "pem-pkcs1", "der", "jwk-json", "jwk-compact", "jwks-json", "n"]
)
def test_rs256_to_hs256_confusion(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected, alg: str, secret: str
) -> None:
    mac_key = _confusion_secrets(victim)[secret]
    for head in (header(alg=alg), header(alg=alg, kid=None)):
        token = forge.sign(head, claims(), mac_key)
        rejected(verifier, token, "invalid_token", "algorithm")


def test_hs_algorithms_need_a_configured_secret(victim: Victim) -> None:
    with pytest.raises(ValueError, match="hmac_secret"):
        Issuer(ISS, audience="api", public_key=victim.pem, algorithms=["RS256", "HS256"])
    with pytest.raises(ValueError, match="hmac_secret"):
        Issuer(ISS, audience="api", jwks=victim.jwks, algorithms=["HS256"])


def test_an_oct_key_published_in_a_jwks_is_never_used(
    forge: type[Forge], clock: Clock, rejected: Rejected
) -> None:
    # A JWKS that (by mistake or malice) publishes a symmetric key: whoever reads the JWKS
    # could mint tokens with it, so it must not verify anything.
    secret = b"k" * 32
    oct_jwk = {"kty": "oct", "k": forge.b64url(secret), "kid": "shared", "alg": "HS256"}
    ec = ECKey.generate_key("P-256")
    jwks = {"keys": [oct_jwk, ec.as_dict(private=False, kid="ec")]}
    with pytest.raises(ValueError, match="HS"):
        Issuer(ISS, audience="api", jwks=jwks, algorithms=["HS256"])
    verifier = Verifier(issuer=ISS, audience="api", jwks=jwks, clock=clock)
    assert verifier.verify(forge.sign({"alg": "ES256", "kid": "ec"}, claims(), ec))["iss"] == ISS
    rejected(verifier, forge.sign({"alg": "HS256", "kid": "shared"}, claims(), secret), "invalid_token")
    [status] = verifier.status()
    assert status["kids"] == ["ec"]
    assert [s["kid"] for s in status["skipped"]] == ["shared"]


# -- keys the token brings along ----------------------------------------------------------------


@pytest.mark.parametrize("kid", [KID, "attacker", None])
def test_embedded_jwk_header_is_not_trusted(
    forge: type[Forge], verifier: Verifier, attacker_key: RSAKey, rejected: Rejected, kid: str | None
) -> None:
    jwk = attacker_key.as_dict(private=False, kid=kid or "attacker", alg="RS256", use="sig")
    token = forge.sign(header(kid=kid, jwk=jwk), claims(), attacker_key)
    rejected(verifier, token, "invalid_token")


def _settled_connections(listener: Listener) -> int:
    """Connections the listener received before now: a sentinel connection is accepted after
    every earlier one (accept is FIFO), and the listener closes it once counted."""
    with socket.create_connection(("127.0.0.1", int(listener.url.rsplit(":", 1)[1])), timeout=5) as s:
        s.settimeout(5)
        assert s.recv(1) == b""  # closed by the listener: it has been counted
    return listener.connections - 1


def test_listener_counts_connections(listener: Listener) -> None:
    # The instrument itself: a connection to the URL is counted (so a zero below means none).
    import httpx

    with pytest.raises(httpx.TransportError):
        httpx.get(listener.url + "/jwks.json", timeout=5)
    assert _settled_connections(listener) == 1


@pytest.mark.parametrize("param", ["jku", "x5u"])
@pytest.mark.parametrize("kid", ["attacker", KID, None])
def test_jku_and_x5u_are_never_fetched(
    forge: type[Forge],
    verifier: Verifier,
    source: dict[str, Any],
    attacker_key: RSAKey,
    listener: Listener,
    honest: Callable[..., str],
    rejected: Rejected,
    param: str,
    kid: str | None,
) -> None:
    url = listener.url + "/.well-known/jwks.json"
    token = forge.sign(header(kid=kid, **{param: url}), claims(), attacker_key)
    rejected(verifier, token, "invalid_token")
    # An honest token naming the URL verifies with the configured keys, still without a fetch.
    assert verifier.verify(honest(header(**{param: url})))["iss"] == ISS
    assert _settled_connections(listener) == 0
    server = source.get("server")
    if server is not None:
        # The configured JWKS was fetched, once: the only URL the verifier ever calls.
        assert server.requests(JWKS_PATH) == 1


@pytest.mark.anyio
async def test_jku_is_never_fetched_async(
    forge: type[Forge], verifier: Verifier, attacker_key: RSAKey, listener: Listener
) -> None:
    token = forge.sign(header(kid="attacker", jku=listener.url + "/jwks"), claims(), attacker_key)
    with pytest.raises(AuthError) as info:
        await verifier.verify_async(token)
    assert info.value.kind == "invalid_token"
    assert _settled_connections(listener) == 0


def _self_signed_cert(key: RSAKey, subject: str) -> bytes:
    private = key.private_key
    assert private is not None
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("kid", [KID, None])
def test_x5c_with_an_attacker_certificate_is_not_trusted(
    forge: type[Forge], verifier: Verifier, attacker_key: RSAKey, rejected: Rejected, kid: str | None
) -> None:
    cert = base64.b64encode(_self_signed_cert(attacker_key, "victim.example")).decode()
    token = forge.sign(header(kid=kid, x5c=[cert], x5t="irrelevant"), claims(), attacker_key)
    rejected(verifier, token, "invalid_token", "signature")


# -- crit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "crit",
    [["exp"], ["http://example.com/ext"], ["b64"], [], "exp", None],
    ids=["registered", "uri", "b64", "empty", "string", "null"],
)
def test_crit_is_refused_even_when_signed(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected, crit: Any
) -> None:
    head = header(**{"http://example.com/ext": True, "exp": 1})
    head["crit"] = crit
    rejected(verifier, forge.sign(head, claims(), victim.key), "invalid_token", "extension")


def test_crit_is_refused_by_the_jws_layer_itself(forge: type[Forge], victim: Victim) -> None:
    # Below any issuer policy: the strict JWS parser refuses what it does not implement.
    for crit in (["exp"], []):
        with pytest.raises(AuthError, match="extension"):
            parse_compact(forge.sign(header(crit=crit, exp=1), claims(), victim.key))
    assert parse_compact(forge.sign(header(), claims(), victim.key)).kid == KID


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "HS1", "RS1", "ES256K", "", "EdDSA "])
def test_the_jws_layer_refuses_unknown_algorithms(forge: type[Forge], alg: str) -> None:
    with pytest.raises(AuthError, match="algorithm") as info:
        parse_compact(forge.compact({"alg": alg}, claims(), b"sig"))
    assert info.value.kind == "invalid_token"


def test_check_signature_never_raises_joserfc_errors(forge: type[Forge], victim: Victim) -> None:
    # A key joserfc refuses for the operation (key_ops without "verify") is a failed check,
    # not a joserfc exception escaping.
    token = parse_compact(forge.sign({"alg": "HS256"}, claims(), b"k" * 32))
    assert check_signature(token, OctKey.import_key(b"k" * 32))
    sign_only = OctKey.import_key(b"k" * 32, {"key_ops": ["sign"]})
    assert check_signature(token, sign_only) is False
    rsa = parse_compact(forge.sign(header(), claims(), victim.key))
    assert check_signature(rsa, victim.key)
    verify_less = {k: v for k, v in victim.jwk.items() if k not in ("alg", "use")} | {"key_ops": ["encrypt"]}
    assert check_signature(rsa, RSAKey.import_key(verify_less)) is False


@pytest.mark.parametrize("extension", ["b64", "zip", "enc"])
def test_other_unimplemented_extensions_are_refused(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected, extension: str
) -> None:
    value: Any = {"b64": False, "zip": "DEF", "enc": "A256GCM"}[extension]
    rejected(verifier, forge.sign(header(**{extension: value}), claims(), victim.key), "invalid_token")


# -- claims -------------------------------------------------------------------------------------


def test_expired(verifier: Verifier, honest: Callable[..., str], rejected: Rejected, clock: Clock) -> None:
    token = honest(exp=int(EPOCH) + 60)
    assert verifier.verify(token)["exp"] == int(EPOCH) + 60
    rejected(verifier, honest(exp=int(EPOCH) - 3600), "expired_token")
    clock.advance(60 + 30)  # past exp and the default leeway: the cached verification goes too
    rejected(verifier, token, "expired_token")


def test_not_yet_valid(verifier: Verifier, honest: Callable[..., str], rejected: Rejected) -> None:
    rejected(verifier, honest(nbf=int(EPOCH) + 600), "invalid_token", "not valid yet")
    assert verifier.verify(honest(nbf=int(EPOCH) + 10))["nbf"] == int(EPOCH) + 10  # within leeway


def test_issued_in_the_future(verifier: Verifier, honest: Callable[..., str], rejected: Rejected) -> None:
    rejected(verifier, honest(iat=int(EPOCH) + 600), "invalid_token", "issued in the future")


@pytest.mark.parametrize(
    "iss", ["https://evil.example", ISS + "/", ISS.upper(), "", ["https://victim.example"], 1, None]
)
def test_wrong_issuer(verifier: Verifier, honest: Callable[..., str], rejected: Rejected, iss: Any) -> None:
    token = honest(iss=iss) if iss is not None else honest(iss=None)
    rejected(verifier, token, "invalid_token", "issuer")


@pytest.mark.parametrize("aud", ["other", "API", ["other", "x"], [], 1, {"api": True}, [["api"]], [{"a": 1}]])
def test_wrong_audience(verifier: Verifier, honest: Callable[..., str], rejected: Rejected, aud: Any) -> None:
    rejected(verifier, honest(aud=aud), "invalid_token", "audience")


def test_missing_audience(verifier: Verifier, honest: Callable[..., str], rejected: Rejected) -> None:
    rejected(verifier, honest(aud=None), "invalid_token", "audience")


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt+x", "at-jwt", 1, None])
def test_wrong_typ(
    victim: Victim, clock: Clock, honest: Callable[..., str], rejected: Rejected, typ: Any
) -> None:
    verifier = Verifier(issuer=ISS, audience="api", jwks=victim.jwks, typ="at+jwt", clock=clock)
    assert verifier.verify(honest(header(typ="at+jwt")))["iss"] == ISS
    rejected(verifier, honest(header(typ=typ)), "invalid_token", "typ")


def test_oversized(forge: type[Forge], victim: Victim, clock: Clock, rejected: Rejected) -> None:
    verifier = Verifier(issuer=ISS, audience="api", jwks=victim.jwks, max_token_bytes=2048, clock=clock)
    fits = forge.sign(header(), claims(pad="x" * 1000), victim.key)
    assert len(fits) <= 2048
    assert verifier.verify(fits)["pad"] == "x" * 1000
    big = forge.sign(header(), claims(pad="x" * 2000), victim.key)
    assert len(big) > 2048
    rejected(verifier, big, "invalid_token", "too large")
    rejected(verifier, "a" * 10_000_000, "invalid_token", "too large")


# -- whose key ----------------------------------------------------------------------------------


def test_kid_pointing_to_another_issuers_key(
    forge: type[Forge], clock: Clock, victim: Victim, rejected: Rejected
) -> None:
    # Both issuers are trusted; B's key must not verify a token claiming to come from A, even
    # when the token's kid names B's key (and whatever kid it names).
    other = ECKey.generate_key("P-256")
    b_jwks = {"keys": [other.as_dict(private=False, kid="b-1", alg="ES256", use="sig")]}
    verifier = Verifier(
        issuers=[
            Issuer(ISS, audience="api", jwks=victim.jwks),
            Issuer("https://b.example", audience="api", jwks=b_jwks),
        ],
        clock=clock,
    )
    b_token = forge.sign({"alg": "ES256", "kid": "b-1"}, claims(iss="https://b.example"), other)
    assert verifier.verify(b_token).issuer == "https://b.example"
    for kid in ("b-1", KID, None):
        head = {"alg": "ES256", "kid": kid} if kid else {"alg": "ES256"}
        rejected(verifier, forge.sign(head, claims(), other), "invalid_token")


def test_hmac_secret_of_one_issuer_never_verifies_another(
    forge: type[Forge], clock: Clock, rejected: Rejected
) -> None:
    a, b = b"a" * 32, b"b" * 32
    verifier = Verifier(
        issuers=[
            Issuer("https://a.example", audience="api", hmac_secret=a),
            Issuer("https://b.example", audience="api", hmac_secret=b),
        ],
        clock=clock,
    )
    assert verifier.verify(forge.sign({"alg": "HS256"}, claims(iss="https://a.example"), a)).issuer == (
        "https://a.example"
    )
    rejected(verifier, forge.sign({"alg": "HS256"}, claims(iss="https://a.example"), b), "invalid_token")


def _jwks_verifier(jwk: dict[str, Any], clock: Clock) -> Verifier:
    # A bystander key keeps the set non-empty when ``jwk`` itself is refused at import.
    bystander = ECKey.generate_key("P-256").as_dict(private=False, kid="bystander")
    return Verifier(issuer=ISS, audience="api", jwks={"keys": [jwk, bystander]}, clock=clock)


@pytest.mark.parametrize(
    ("metadata", "alg"),
    [
        ({"use": "enc"}, "RS256"),
        ({"use": "sign"}, "RS256"),
        ({"key_ops": ["sign"]}, "RS256"),
        ({"key_ops": ["encrypt"]}, "RS256"),
        ({"key_ops": "verify"}, "RS256"),
        ({"alg": "RS256"}, "PS256"),
        ({"alg": "PS256"}, "RS256"),
        ({"alg": "RS512"}, "RS256"),
    ],
    ids=[
        "use-enc",
        "use-sign",
        "ops-sign",
        "ops-encrypt",
        "ops-string",
        "alg-RS-for-PS",
        "alg-PS-for-RS",
        "RS512",
    ],
)
def test_a_key_that_does_not_fit_the_token_is_not_used(
    forge: type[Forge], victim: Victim, clock: Clock, rejected: Rejected, metadata: dict[str, Any], alg: str
) -> None:
    base = victim.key.as_dict(private=False, kid=KID)
    # Control: the same key with fitting metadata verifies the same token.
    fitting = _jwks_verifier({**base, "alg": alg, "use": "sig", "key_ops": ["verify"]}, clock)
    token = forge.sign(header(alg=alg), claims(), victim.key)
    assert fitting.verify(token)["iss"] == ISS
    rejected(_jwks_verifier({**base, **metadata}, clock), token, "invalid_token")
    # Without a kid, every key of the set is a candidate: still not this one.
    rejected(
        _jwks_verifier({**base, **metadata}, clock),
        forge.sign(header(alg=alg, kid=None), claims(), victim.key),
        "invalid_token",
    )


def test_a_declared_alg_binds_an_ec_key_too(forge: type[Forge], clock: Clock, rejected: Rejected) -> None:
    key = ECKey.generate_key("P-256")
    ok = forge.sign({"alg": "ES256", "kid": "e"}, claims(), key)
    verifier = _jwks_verifier(key.as_dict(private=False, kid="e", alg="ES256"), clock)
    assert verifier.verify(ok)["iss"] == ISS
    # An ES384 header over a P-256 key is refused (the curve fixes the algorithm).
    rejected(verifier, forge.compact({"alg": "ES384", "kid": "e"}, claims(), b"\0" * 96), "invalid_token")


# -- signatures ---------------------------------------------------------------------------------


def test_tampering(
    forge: type[Forge], verifier: Verifier, honest: Callable[..., str], rejected: Rejected
) -> None:
    token = honest()
    head, payload, signature = token.split(".")
    forged_payload = forge.b64url(claims(scope="read admin"))
    rejected(verifier, f"{head}.{forged_payload}.{signature}", "invalid_token", "signature")
    rejected(verifier, f"{head}.{payload}.", "invalid_token", "signature")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    rejected(verifier, f"{head}.{payload}.{flipped}", "invalid_token", "signature")
    # A relabelled algorithm (PS256 over an RS256 signature) is refused too.
    relabelled = forge.b64url(header(alg="PS256"))
    rejected(verifier, f"{relabelled}.{payload}.{signature}", "invalid_token")


def test_psychic_ecdsa_signature(forge: type[Forge], clock: Clock, rejected: Rejected) -> None:
    # CVE-2022-21449: r = s = 0 must not verify.
    key = ECKey.generate_key("P-256")
    verifier = _jwks_verifier(key.as_dict(private=False, kid="e"), clock)
    rejected(verifier, forge.compact({"alg": "ES256", "kid": "e"}, claims(), b"\0" * 64), "invalid_token")
    # A DER-encoded signature (instead of JOSE's r||s) is refused, not crashed on.
    private = key.private_key
    assert private is not None
    from cryptography.hazmat.primitives.asymmetric import ec

    der = private.sign(b"x", ec.ECDSA(hashes.SHA256()))
    rejected(verifier, forge.compact({"alg": "ES256", "kid": "e"}, claims(), der), "invalid_token")


def test_eddsa_signature_of_wrong_length(forge: type[Forge], clock: Clock, rejected: Rejected) -> None:
    key = OKPKey.generate_key("Ed25519")
    verifier = _jwks_verifier(key.as_dict(private=False, kid="o"), clock)
    assert verifier.verify(forge.sign({"alg": "EdDSA", "kid": "o"}, claims(), key))["iss"] == ISS
    for signature in (b"\0", b"\0" * 63, b"\0" * 65, b"\xff" * 64):
        rejected(verifier, forge.compact({"alg": "EdDSA", "kid": "o"}, claims(), signature), "invalid_token")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + "=",  # padding
        lambda t: t.replace(".", "=.", 1),
        lambda t: t[:-1] + {"A": "B"}.get(t[-1], "A") if len(t.split(".")[2]) % 4 else t + "!",
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: t.replace("-", "+").replace("_", "/") + ".x" if "-" in t or "_" in t else t + "/",
        lambda t: t + ".",
        lambda t: t.rsplit(".", 1)[0],
        lambda t: "." + t,
    ],
    ids=[
        "pad",
        "pad-header",
        "non-canonical",
        "space",
        "newline",
        "std-b64",
        "four-parts",
        "two-parts",
        "lead-dot",
    ],
)
def test_malformed_encodings(
    verifier: Verifier, honest: Callable[..., str], rejected: Rejected, mangle: Callable[[str], str]
) -> None:
    token = honest()
    mangled = mangle(token)
    assert mangled != token
    rejected(verifier, mangled, "invalid_token")


def test_non_canonical_base64_trailing_bits(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected
) -> None:
    # Two encodings of the same signature bytes: only the canonical one is accepted.
    token = forge.sign(header(), claims(), victim.key)
    head, payload, signature = token.split(".")
    assert verifier.verify(token)["iss"] == ISS
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rem = len(signature) % 4
    assert rem in (2, 3)  # a 256-byte RSA signature leaves unused bits
    last = alphabet.index(signature[-1])
    twin = signature[:-1] + alphabet[last | 1]
    assert base64.urlsafe_b64decode(twin + "=" * (4 - rem)) == base64.urlsafe_b64decode(
        signature + "=" * (4 - rem)
    )
    rejected(verifier, f"{head}.{payload}.{twin}", "invalid_token", "base64url")


def test_duplicate_member_names_are_refused(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected
) -> None:
    # {"aud": "other", "aud": "api"}: parsers disagree on which wins, so neither does.
    payload = json.dumps(claims()).replace('"aud": "api"', '"aud": "other", "aud": "api"')
    assert payload.count('"aud"') == 2
    rejected(verifier, forge.sign(header(), payload.encode(), victim.key), "invalid_token", "JSON")
    head = '{"alg": "RS256", "alg": "none", "kid": "' + KID + '"}'
    rejected(verifier, forge.compact(head.encode(), claims()), "invalid_token", "JSON")


@pytest.mark.parametrize(
    "payload",
    [b"[]", b"[1,2]", b"1700000000", b'"claims"', b"null", b"true", b"", b"{", b"\xff\xfe{}", b"{}{}"],
    ids=["array", "array2", "number", "string", "null", "true", "empty", "truncated", "bad-utf8", "two"],
)
def test_payload_must_be_a_json_object(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected, payload: bytes
) -> None:
    rejected(verifier, forge.sign(header(), payload, victim.key), "invalid_token")


@pytest.mark.parametrize(
    "head",
    [b"[]", b'["alg","RS256"]', b"256", b'"RS256"', b"null", b'{"alg":"RS256"', b"{}", b'{"alg":256}'],
    ids=["array", "array2", "number", "string", "null", "truncated", "no-alg", "alg-number"],
)
def test_header_must_be_a_json_object_with_an_alg(
    forge: type[Forge], verifier: Verifier, rejected: Rejected, head: bytes
) -> None:
    rejected(verifier, forge.compact(head, claims(), b"sig"), "invalid_token")


@pytest.mark.parametrize("kid", [1, ["victim-1"], {"kid": "victim-1"}, True])
def test_kid_must_be_a_string(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected, kid: Any
) -> None:
    rejected(verifier, forge.sign(header(kid=kid), claims(), victim.key), "invalid_token", "key id")


@pytest.mark.parametrize(
    "exp",
    [True, False, "1700000300", "", [int(EPOCH) + 300], {"t": 1}, 10**400, -(10**400), 1e308 * 10, None],
    ids=["true", "false", "string", "empty", "list", "object", "huge-int", "neg-huge", "inf", "missing"],
)
def test_bad_exp(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected, exp: Any
) -> None:
    rejected(verifier, forge.sign(header(), claims(exp=exp), victim.key), "invalid_token")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_non_finite_numeric_dates(
    forge: type[Forge], verifier: Verifier, victim: Victim, rejected: Rejected, literal: bytes, name: str
) -> None:
    payload = json.dumps(claims(**{name: 12345})).encode().replace(b"12345", literal)
    rejected(verifier, forge.sign(header(), payload, victim.key), "invalid_token")


# -- fuzzing: whatever comes in, only an AuthError comes out -----------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# ``forge`` is a stateless helper, so sharing it between examples is safe.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def fuzz_verifier(victim: Victim) -> Verifier:
    # Caches off: every example goes the whole way through the verifier.
    return Verifier(issuer=ISS, audience="api", jwks=victim.jwks, clock=lambda: EPOCH, cache_size=0)


def _outcome(verifier: Verifier, token: Any) -> AuthError | None:
    """Verify; None when it verified, the AuthError when not. Anything else propagates."""
    try:
        verifier.verify(token)
    except AuthError as caught:
        error = caught
    else:
        return None
    assert error.kind in ERROR_KINDS
    assert error.__cause__ is None
    assert len(error.description) <= 200
    if isinstance(token, str) and len(token) >= 16:
        assert token not in f"{error} {error!r}"
    return error


@FUZZ
@given(token=st.text(max_size=300))
def test_fuzz_any_text(fuzz_verifier: Verifier, token: str) -> None:
    error = _outcome(fuzz_verifier, token)
    assert error is not None
    assert error.kind == ("missing_token" if token == "" else "invalid_token")


@FUZZ
@given(
    token=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=", max_size=400)
)
def test_fuzz_base64url_alphabet(fuzz_verifier: Verifier, token: str) -> None:
    error = _outcome(fuzz_verifier, token)
    assert error is not None
    assert error.kind in ("missing_token", "invalid_token")


@FUZZ
@given(
    value=st.binary()
    | st.integers()
    | st.floats()
    | st.lists(st.text())
    | JSON.filter(lambda v: not isinstance(v, str))
)
def test_fuzz_non_string_inputs(fuzz_verifier: Verifier, value: Any) -> None:
    error = _outcome(fuzz_verifier, value)
    assert error is not None
    assert error.kind == ("missing_token" if value is None else "invalid_token")


@FUZZ
@given(head=JSON, payload=JSON)
def test_fuzz_json_header_and_payload(
    forge: type[Forge], fuzz_verifier: Verifier, victim: Victim, head: Any, payload: Any
) -> None:
    # Arbitrary JSON documents as header and payload (arrays, numbers, strings, objects).
    forged = forge.compact(head, payload, b"\x00" * 8)
    error = _outcome(fuzz_verifier, forged)
    assert error is not None
    assert error.kind == "invalid_token"


REGISTERED = st.sampled_from(["exp", "nbf", "iat", "aud", "iss", "sub", "scope", "scp", "typ", "kid"])


def _oracle(payload: dict[str, Any]) -> bool:
    """An independent statement of which payloads must verify (leeway 30, now EPOCH)."""

    def date(name: str) -> float | bool | None:
        value = payload.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            number = float(value)
        except OverflowError:
            return False
        return number if math.isfinite(number) else False

    exp, nbf, iat = date("exp"), date("nbf"), date("iat")
    if exp is None or exp is False or not exp + 30 > EPOCH:
        return False
    if nbf is False or (nbf is not None and nbf > EPOCH + 30):
        return False
    if iat is False or (iat is not None and iat > EPOCH + 30):
        return False
    aud = payload.get("aud")
    if not (aud == "api" or (isinstance(aud, list) and "api" in aud)):
        return False
    if "sub" in payload and payload["sub"] is not None and not isinstance(payload["sub"], str):
        return False
    return payload.get("iss") == ISS


@example(changes={}, extra_header={"nonce": "n", "client_id": "c"})  # verifies
@example(changes={"exp": True}, extra_header={})
@example(changes={"aud": ["x", "api"], "nbf": int(EPOCH) + 29}, extra_header={"typ": "JWT"})  # verifies
@FUZZ
@given(
    changes=st.dictionaries(
        REGISTERED,
        JSON | st.integers(min_value=int(EPOCH) - 400, max_value=int(EPOCH) + 400) | st.just("api"),
        max_size=4,
    ),
    extra_header=st.dictionaries(
        st.sampled_from(["typ", "cty", "x5t", "nonce", "client_id", "jku", "x5u"]), JSON
    ),
)
def test_fuzz_signed_claims_against_an_oracle(
    forge: type[Forge],
    fuzz_verifier: Verifier,
    victim: Victim,
    changes: dict[str, Any],
    extra_header: dict[str, Any],
) -> None:
    # Validly signed tokens whose registered claims take arbitrary values: the verifier
    # accepts exactly those the oracle accepts, and refuses the rest with an AuthError.
    payload = claims()
    payload.update(changes)
    head = {**extra_header, **header()}
    token = forge.sign(head, payload, victim.key)
    error = _outcome(fuzz_verifier, token)
    expected = _oracle(payload)
    assert (error is None) == expected, (payload, error)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_tokens_never_verify(
    forge: type[Forge], fuzz_verifier: Verifier, victim: Victim, data: st.DataObject
) -> None:
    token = forge.sign(header(), claims(), victim.key)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != token[position]))
    mutated = token[:position] + replacement + token[position + 1 :]
    error = _outcome(fuzz_verifier, mutated)
    assert error is not None
    assert error.kind == "invalid_token"


def test_every_truncation_and_deletion_is_refused(
    forge: type[Forge], fuzz_verifier: Verifier, victim: Victim
) -> None:
    token = forge.sign(header(), claims(), victim.key)
    assert _outcome(fuzz_verifier, token) is None
    for cut in range(len(token)):
        error = _outcome(fuzz_verifier, token[:cut])
        assert error is not None
        assert error.kind in ("missing_token", "invalid_token")
        error = _outcome(fuzz_verifier, token[:cut] + token[cut + 1 :])
        assert error is not None
        assert error.kind == "invalid_token"


@pytest.mark.parametrize("where", ["header", "payload"])
@pytest.mark.parametrize("shape", ["[", '{"a":'])
def test_deeply_nested_json(forge: type[Forge], victim: Victim, where: str, shape: str) -> None:
    # A large size limit lets the nesting go far past Python's recursion limit.
    verifier = Verifier(
        issuer=ISS, audience="api", jwks=victim.jwks, clock=lambda: EPOCH, max_token_bytes=2_000_000
    )
    depth = 200_000
    closing = "]" if shape == "[" else "}"
    nested = (shape * depth + "1" + closing * depth).encode()
    if where == "header":
        token = forge.compact(nested, claims(), b"x")
    else:
        inner = json.dumps(claims())[:-1] + ', "deep": '
        token = forge.sign(header(), inner.encode() + nested + b"}", victim.key)
    error = _outcome(verifier, token)
    assert error is not None
    assert error.kind == "invalid_token"


@pytest.mark.anyio
async def test_async_verify_refuses_the_same_way(fuzz_verifier: Verifier) -> None:
    for token in ("", "a.b.c", "\ud800", "x" * 100_000, b"bytes", 42):
        with pytest.raises(AuthError) as info:
            await fuzz_verifier.verify_async(token)  # type: ignore[arg-type]
        sync_error = _outcome(fuzz_verifier, token)
        assert sync_error is not None
        assert sync_error.kind == info.value.kind
