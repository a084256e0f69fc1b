"""Public test vectors, run against the code that verifies production tokens.

Wycheproof's JWS and JWK vectors (``tests/vectors/wycheproof``, Apache-2.0) and the JOSE Cookbook
(RFC 7520, ``tests/vectors/jose-cookbook``) go through exactly the production path:
``parse_compact``, key selection by ``kid`` and ``alg`` with ``KeySet.candidates``, then
``check_signature``. Keys enter the way a deployment gives them:

- asymmetric keys as a published JWKS, through ``parse_jwks`` (so ``import_jwk`` and all its
  refusals); a vector that only gives a private key is published as its public part, which is
  all an issuer serves;
- ``oct`` keys as an explicitly configured HMAC secret, through ``parse_secret_jwks`` /
  ``import_secret_jwk`` (``alg``, ``use``, ``key_ops`` and ``kid`` honoured), and only when the
  whole set is secrets: a set that mixes secrets with public keys is a JWKS, where ``oct`` keys are
  never accepted.

A key that import refuses verifies nothing, so its cases come out invalid. The expected result is
the vector's label, except for the cases listed in ``KNOWN_LABEL_DEFECTS.json``, whose ``correct``
value is used instead; their test ids end in ``-label-defect``. Cases the current code cannot
pass are listed in ``KNOWN_GAPS`` with the reason, as strict xfails.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from gatekeeper.errors import AuthError
from gatekeeper.jws import check_signature, parse_compact
from gatekeeper.keys import (
    KeyImportError,
    KeySet,
    import_jwk,
    import_secret_jwk,
    parse_jwks,
    parse_secret_jwks,
)
from gatekeeper.roca import is_roca_vulnerable

VECTORS = Path(__file__).parent / "vectors"
WYCHEPROOF = VECTORS / "wycheproof"
COOKBOOK = VECTORS / "jose-cookbook"
JWS_FILE = "json_web_signature_test.json"
JWK_FILE = "json_web_key_test.json"
# Asymmetric private members; an issuer publishes a JWK without them.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})

# joserfc warns about RSA keys under 2048 bits as it imports them; gatekeeper then refuses them.
pytestmark = pytest.mark.filterwarnings("ignore:Key size should be >= 2048 bits")


@cache
def wycheproof(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((WYCHEPROOF / name).read_text(encoding="utf-8"))
    return document


def label_defects(name: str) -> dict[str, dict[str, str]]:
    defects: dict[str, dict[str, str]] = wycheproof("KNOWN_LABEL_DEFECTS.json").get(name, {})
    return defects


def corrected(defect: Mapping[str, str]) -> str:
    """The first word of a defect's ``correct`` ("valid (byte-identical to tc 357)" -> "valid")."""
    return defect["correct"].split()[0]


def cases_by_id(name: str) -> dict[str, dict[str, Any]]:
    return {str(t["tcId"]): t for group in wycheproof(name)["testGroups"] for t in group["tests"]}


def wycheproof_cases(name: str, prefix: str) -> list[Any]:
    defects = label_defects(name)
    params = []
    for group in wycheproof(name)["testGroups"]:
        for test in group["tests"]:
            defect = defects.get(str(test["tcId"]))
            expected = test["result"] if defect is None else corrected(defect)
            case_id = f"{prefix}-tc{test['tcId']}-{test['comment']}" + ("-label-defect" if defect else "")
            params.append(pytest.param(group, test, expected, id=case_id))
    return params


def public_part(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """What an issuer publishes for an asymmetric key; ``oct`` keys are left whole, to be refused."""
    if jwk.get("kty") == "oct":
        return dict(jwk)
    return {name: value for name, value in jwk.items() if name not in PRIVATE_MEMBERS}


def group_keys(group: Mapping[str, Any]) -> KeySet:
    """The group's keys, entered the way a deployment would give them (see the module docstring)."""
    source = group["public"] if "public" in group else group["private"]
    entries: list[dict[str, Any]] = source.get("keys", [source])
    if entries and all(entry.get("kty") == "oct" for entry in entries):
        return parse_secret_jwks({"keys": entries})
    return parse_jwks({"keys": [public_part(entry) for entry in entries]})


def verifies(token: str, keys: KeySet) -> bool:
    """The production decision: a strict parse, then any candidate key for (kid, alg) verifies."""
    try:
        jws = parse_compact(token)
    except AuthError as exc:
        kind = exc.kind
    else:
        return any(check_signature(jws, key.key) for key in keys.candidates(jws.kid, jws.alg))
    assert kind == "invalid_token"  # a malformed token is refused as such, never a crash
    return False


def run_case(group: Mapping[str, Any], test: Mapping[str, Any], expected: str) -> None:
    assert expected in {"valid", "invalid"}
    token = test["jws"]
    if not isinstance(token, str):
        # A JSON-serialised JWS reaches gatekeeper as its JSON text (a bearer token is a string);
        # parse_compact itself must refuse it, whatever the keys would say.
        token = json.dumps(token)
        with pytest.raises(AuthError):
            parse_compact(token)
    assert verifies(token, group_keys(group)) is (expected == "valid")


# -- Wycheproof ------------------------------------------------------------------------------


@pytest.mark.parametrize(("group", "test", "expected"), wycheproof_cases(JWS_FILE, "jws"))
def test_wycheproof_json_web_signature(group: dict[str, Any], test: dict[str, Any], expected: str) -> None:
    run_case(group, test, expected)


@pytest.mark.parametrize(("group", "test", "expected"), wycheproof_cases(JWK_FILE, "jwk"))
def test_wycheproof_json_web_key(group: dict[str, Any], test: dict[str, Any], expected: str) -> None:
    run_case(group, test, expected)


def test_every_wycheproof_case_is_collected() -> None:
    for name in (JWS_FILE, JWK_FILE):
        assert len(cases_by_id(name)) == wycheproof(name)["numberOfTests"]


@pytest.mark.parametrize("name", [JWS_FILE, JWK_FILE])
def test_label_defects_name_real_cases_with_that_label(name: str) -> None:
    # A stale entry (the upstream label fixed, or a tcId renumbered) must not silently flip a case.
    tests = cases_by_id(name)
    for tc_id, defect in label_defects(name).items():
        assert tests[tc_id]["result"] == defect["label"], tc_id
        assert corrected(defect) in {"valid", "invalid"}
        assert corrected(defect) != defect["label"]
        same = re.search(r"byte-identical to tc (\d+)", defect["correct"])
        if same is not None:
            twin = tests[same.group(1)]
            assert tests[tc_id]["jws"] == twin["jws"], tc_id
            assert twin["result"] == corrected(defect)


def jwk_case(tc_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    for group in wycheproof(JWK_FILE)["testGroups"]:
        for test in group["tests"]:
            if test["tcId"] == tc_id:
                return group, test
    raise LookupError(tc_id)


@pytest.mark.parametrize(
    ("tc_id", "reason"),
    [
        (1, "symmetric keys are only accepted as an explicitly configured secret"),
        (4, "several different keys share this kid"),
        (6, "key is not for signatures (use)"),
        (7, "ROCA"),
        (8, "RSA key is shorter than 2048 bits"),
        (9, "key material is invalid"),
        (10, "shorter than the hash size"),
        (11, "shorter than the hash size"),
        (12, "shorter than the hash size"),
        (16, "shorter than the hash size"),
        (17, "shorter than the hash size"),
        (18, "shorter than the hash size"),
        (19, "key alg does not fit its type and curve"),
        (20, "key alg does not fit its type and curve"),
        (21, "key is not for signatures (use)"),
        (22, "key material is invalid"),
        (23, "key alg does not fit its type and curve"),
        (24, "key alg does not fit its type and curve"),
        (25, "key alg does not fit its type and curve"),
        (26, "key alg does not fit its type and curve"),
    ],
)
def test_wycheproof_bad_keys_are_refused_for_the_right_reason(tc_id: int, reason: str) -> None:
    # The parametrised cases only see "invalid"; this pins down that the key was refused on
    # import, and why, rather than the token failing for some incidental reason.
    group, _ = jwk_case(tc_id)
    keys = group_keys(group)
    assert any(reason in skipped.reason for skipped in keys.skipped), keys.skipped


def test_mixed_set_is_refused_whole_as_secrets_and_loses_its_secret_as_a_jwks() -> None:
    group, test = jwk_case(1)
    document = group["private"]
    with pytest.raises(ValueError, match="only contain oct keys"):
        parse_secret_jwks(document)
    keys = parse_jwks(document)
    assert [key.kty for key in keys.keys] == ["EC"]
    assert not verifies(test["jws"], keys)


def rs256_group() -> tuple[dict[str, Any], str]:
    """Wycheproof's main RS256 key (public and private JWK) and its valid token, tc 33."""
    group = wycheproof(JWS_FILE)["testGroups"][2]
    token = group["tests"][0]
    assert (token["tcId"], token["result"]) == (33, "valid")
    return group, token["jws"]


def test_a_key_listed_again_for_another_use_is_not_ambiguous() -> None:
    group, token = rs256_group()
    public = group["public"]
    assert verifies(token, parse_jwks({"keys": [public]}))
    # Same material, same kid, refused for use=enc: one key, not two.
    keys = parse_jwks({"keys": [public, public | {"use": "enc"}]})
    assert verifies(token, keys)
    assert [s.reason for s in keys.skipped] == ["key is not for signatures (use)"]


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"kty": "RSA", "n": "not base64url!", "e": "AQAB"}, id="unreadable"),
        pytest.param(public_part(jwk_case(8)[0]["private"]["keys"][0]), id="rsa-1024"),
    ],
)
def test_a_kid_that_also_names_a_refused_different_key_is_ambiguous(other: dict[str, Any]) -> None:
    group, token = rs256_group()
    public = group["public"]
    keys = parse_jwks({"keys": [public, other | {"kid": public["kid"]}]})
    assert not keys.keys
    assert "several different keys share this kid" in [s.reason for s in keys.skipped]
    assert not verifies(token, keys)


@pytest.mark.parametrize("kid", ["kid-rsa-sign", "another-kid"])
def test_a_key_whose_private_half_is_published_is_not_trusted(kid: str) -> None:
    group, token = rs256_group()
    keys = parse_jwks({"keys": [group["public"], group["private"] | {"kid": kid}]})
    assert not keys.keys
    assert "the key set also publishes this key's private key" in [s.reason for s in keys.skipped]
    assert not verifies(token, keys)


# -- secrets given as JWKs ---------------------------------------------------------------------

SECRET = base64.urlsafe_b64encode(bytes(range(64))).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"use": "enc"}, "use"),
        ({"key_ops": ["sign"]}, "key_ops"),
        ({"key_ops": "verify"}, "key_ops"),
        ({"alg": "RS256"}, "alg"),
        ({"alg": "A256KW"}, "alg"),
        ({"kid": 7}, "kid"),
        ({"kty": "RSA"}, "oct"),
        ({"k": SECRET + "="}, "base64url"),
        ({"k": SECRET[:-1] + "+"}, "base64url"),
        ({"k": SECRET[:-1] + "x"}, "canonical"),  # "w" -> "x": a set bit past the last byte
        ({"k": None}, "base64url"),
        ({"k": SECRET[:40]}, "shorter than the hash size"),  # 30 bytes
    ],
)
def test_secret_jwk_is_held_to_the_jwks_rules(changes: dict[str, Any], reason: str) -> None:
    jwk = {"kty": "oct", "k": SECRET, "kid": "s1", "use": "sig", "key_ops": ["sign", "verify"]}
    key = import_secret_jwk(jwk)
    assert key.kid == "s1"
    assert key.algorithms == frozenset({"HS256", "HS384", "HS512"})
    with pytest.raises(KeyImportError, match=re.escape(reason)):
        import_secret_jwk(jwk | changes)


def test_secret_jwk_alg_limits_the_key_to_that_algorithm() -> None:
    key = import_secret_jwk({"kty": "oct", "k": SECRET, "alg": "HS384"})
    assert key.algorithms == frozenset({"HS384"})
    assert key.kid is None


# -- ROCA ----------------------------------------------------------------------------------------

# The published detector's masks (crocs-muni/roca), for primes 3..167: bit r set for each residue
# r in the subgroup generated by 65537. gatekeeper.roca computes its own; they must agree.
PUBLISHED_PRINTS = (
    6, 30, 126, 1026, 5658, 107286, 199410, 8388606, 536870910, 2147483646, 67109890,
    2199023255550, 8796093022206, 140737488355326, 5310023542746834, 576460752303423486,
    1455791217086302986, 147573952589676412926, 20052041432995567486, 6041388139249378920330,
    207530445072488465666, 9671406556917033397649406, 618970019642690137449562110,
    79228162521181866724264247298, 2535301200456458802993406410750,
    1760368345969468176824550810518, 50079290986288516948354744811034,
    473022961816146413042658758988474, 10384593717069655257060992658440190,
    144390480366845522447407333004847678774, 2722258935367507707706996859454145691646,
    174224571863520493293247799005065324265470, 696898287454081973172991196020261297061886,
    713623846352979940529142984724747568191373310, 1800793591454480341970779146165214289059119882,
    126304807362733370595828809000324029340048915994,
    11692013098647223345629478661730264157247460343806,
    187072209578355573530071658587684226515959365500926,
)  # fmt: skip
PRIMES = tuple(p for p in range(3, 168) if all(p % d for d in range(2, math.isqrt(p) + 1)))


def modulus(jwk: Mapping[str, Any]) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4)), "big")


def roca_key() -> dict[str, Any]:
    group, _ = jwk_case(7)
    return public_part(group["private"]["keys"][0])


def test_roca_masks_are_the_published_ones() -> None:
    assert len(PRIMES) == len(PUBLISHED_PRINTS) == 38
    for prime, mask in zip(PRIMES, PUBLISHED_PRINTS, strict=True):
        subgroup = {pow(65537, e, prime) for e in range(prime)}
        assert mask == sum(1 << r for r in subgroup)


def test_roca_vector_key_is_flagged_and_refused_on_import() -> None:
    jwk = roca_key()
    assert is_roca_vulnerable(modulus(jwk))
    with pytest.raises(KeyImportError, match="ROCA"):
        import_jwk(jwk)


def test_roca_vector_fails_only_because_of_the_fingerprint() -> None:
    # Without the ROCA check the signature verifies: the refusal is what makes tc 7 invalid.
    _, test = jwk_case(7)
    jws = parse_compact(test["jws"])
    assert check_signature(jws, RSAKey.import_key(roca_key()))


def test_fresh_rsa_keys_are_not_flagged() -> None:
    for _ in range(8):
        n = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers().n
        assert not is_roca_vulnerable(n)


def test_other_vector_rsa_keys_are_not_flagged() -> None:
    moduli = set()
    for name in (JWS_FILE, JWK_FILE):
        for group in wycheproof(name)["testGroups"]:
            for source in (group.get("public"), group.get("private")):
                entries = [] if source is None else source.get("keys", [source])
                moduli |= {modulus(e) for e in entries if e.get("kty") == "RSA" and "n" in e}
    moduli |= {modulus(json.loads((COOKBOOK / "jwk" / "3_3.rsa_public_key.json").read_text()))}
    moduli.discard(modulus(roca_key()))
    assert len(moduli) >= 6
    assert not any(is_roca_vulnerable(n) for n in moduli)


def test_every_prime_of_the_fingerprint_counts() -> None:
    # n = k*M + 65537^c mod M has the fingerprint; moving n mod one prime out of the subgroup
    # (by adding a multiple of M/p, which leaves every other residue alone) removes it.
    primorial = math.prod(PRIMES)
    for _ in range(20):
        n = secrets.randbelow(2**1500) * primorial + pow(65537, secrets.randbelow(2**64), primorial)
        assert is_roca_vulnerable(n)
    for prime in PRIMES:
        subgroup = {pow(65537, e, prime) for e in range(prime)}
        outside = next((r for r in range(1, prime) if r not in subgroup), None)
        if outside is None:
            continue  # 65537 generates every unit mod this prime: only n = 0 mod p fails here
        step = primorial // prime
        shift = (outside - n) * pow(step, -1, prime) % prime
        moved = n + shift * step
        assert moved % prime == outside
        assert not is_roca_vulnerable(moved), prime
    assert not is_roca_vulnerable(3 * n)  # 0 is never in a subgroup of the units


def test_roca_refuses_a_non_positive_modulus() -> None:
    with pytest.raises(ValueError, match="positive"):
        is_roca_vulnerable(0)


# -- JOSE Cookbook (RFC 7520) ----------------------------------------------------------------

# Each compact example with the published RFC 7520 section 3 key it is verified with.
COOKBOOK_COMPACT = [
    pytest.param("4_1.rsa_v15_signature.json", "3_3.rsa_public_key.json", "RS256", id="4_1-RS256"),
    pytest.param("4_2.rsa-pss_signature.json", "3_3.rsa_public_key.json", "PS384", id="4_2-PS384"),
    pytest.param("4_3.ecdsa_signature.json", "3_1.ec_public_key.json", "ES512", id="4_3-ES512"),
    pytest.param(
        "4_4.hmac-sha2_integrity_protection.json",
        "3_5.symmetric_key_mac_computation.json",
        "HS256",
        id="4_4-HS256",
    ),
]


def cookbook(folder: str, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((COOKBOOK / folder / name).read_text(encoding="utf-8"))
    return document


def cookbook_keys(jwk: Mapping[str, Any]) -> KeySet:
    """The published key as a deployment enters it: a secret, or a public JWK."""
    return KeySet([import_secret_jwk(jwk) if jwk["kty"] == "oct" else import_jwk(jwk)])


def flip_signature_byte(token: str, index: int) -> str:
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[index] ^= 0x01
    return f"{head}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


@pytest.mark.parametrize(("example", "key_file", "alg"), COOKBOOK_COMPACT)
def test_cookbook_compact_verifies_with_the_published_key(example: str, key_file: str, alg: str) -> None:
    data = cookbook("jws", example)
    published = cookbook("jwk", key_file)
    # The section 3 key is the public part of the key the example was made with.
    assert published == public_part(data["input"]["key"])
    jws = parse_compact(data["output"]["compact"])
    assert jws.alg == alg
    assert jws.payload == data["input"]["payload"].encode("utf-8")
    candidates = cookbook_keys(published).candidates(jws.kid, jws.alg)
    assert len(candidates) == 1
    assert check_signature(jws, candidates[0].key)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize(("example", "key_file", "alg"), COOKBOOK_COMPACT)
def test_cookbook_one_byte_change_in_the_signature_fails(
    example: str, key_file: str, alg: str, where: str
) -> None:
    token = cookbook("jws", example)["output"]["compact"]
    keys = cookbook_keys(cookbook("jwk", key_file))
    assert verifies(token, keys)
    size = len(parse_compact(token).signature)
    index = {"first": 0, "middle": size // 2, "last": size - 1}[where]
    assert not verifies(flip_signature_byte(token, index), keys)


def test_cookbook_detached_content_compact_never_verifies() -> None:
    # RFC 7520 4.5: the compact form with an empty payload segment. gatekeeper has no detached
    # content to put back (an access token carries its claims): today parse_compact refuses the
    # empty segment outright, and if it parsed it the MAC, made over the content, would not match.
    data = cookbook("jws", "4_5.signature_with_detached_content.json")
    token = data["output"]["compact"]
    head, payload, signature = token.split(".")
    assert payload == ""
    keys = cookbook_keys(data["input"]["key"])
    assert not verifies(token, keys)
    # The signature itself is good: with the content put back, the token verifies.
    content = base64.urlsafe_b64encode(data["input"]["payload"].encode("utf-8")).rstrip(b"=").decode()
    assert verifies(f"{head}.{content}.{signature}", keys)


def test_cookbook_unprotected_header_only_example_has_no_acceptable_compact_form() -> None:
    # RFC 7520 4.7 protects the content only: its header is unprotected, so the compact form would
    # have an empty header segment (and no alg anyone signed).
    data = cookbook("jws", "4_7.protecting_content_only.json")
    payload = data["output"]["json_flat"]["payload"]
    signature = data["output"]["json_flat"]["signature"]
    with pytest.raises(AuthError):
        parse_compact(f".{payload}.{signature}")


COOKBOOK_JSON = [
    pytest.param(path.name, form, id=f"{path.name.split('.')[0]}-{form}")
    for path in sorted((COOKBOOK / "jws").glob("*.json"))
    for form in ("json", "json_flat")
    if form in json.loads(path.read_text(encoding="utf-8"))["output"]
]


@pytest.mark.parametrize(("example", "form"), COOKBOOK_JSON)
def test_cookbook_json_serialisations_are_refused(example: str, form: str) -> None:
    # gatekeeper verifies compact JWS only: JSON serialisations (general, flattened, multiple
    # signatures, unprotected headers) arrive, if at all, as JSON text and are refused.
    serialised = cookbook("jws", example)["output"][form]
    with pytest.raises(AuthError, match="not a compact JWS"):
        parse_compact(json.dumps(serialised))
