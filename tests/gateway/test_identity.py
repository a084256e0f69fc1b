"""Identity headers: claims -> headers with an encoding no claim can break, and the removal of
every client copy of a header the gateway sets."""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.claims import Claims, normalise_scopes
from gatekeeper.gateway import identity as identity_module
from gatekeeper.gateway.identity import HeaderSpec, IdentityHeaders, client_id_of, encode_value

ISS = "https://issuer.example/"


def claims(**data: Any) -> Claims:
    data.setdefault("iss", ISS)
    data.setdefault("exp", 2_000_000_000)
    return Claims(data, normalise_scopes(data), issuer=ISS, kid="k1")


def test_default_headers() -> None:
    values = IdentityHeaders().values(claims(sub="user-1", client_id="app", scope="write read"))
    assert values == [
        ("X-Auth-Subject", "user-1"),
        ("X-Auth-Client-Id", "app"),
        ("X-Auth-Scopes", "read write"),
        ("X-Auth-Issuer", "https://issuer.example/"),
    ]


def test_client_id_falls_back_to_azp_and_absent_claims_send_nothing() -> None:
    values = dict(IdentityHeaders().values(claims(azp="spa")))
    assert values == {"X-Auth-Client-Id": "spa", "X-Auth-Issuer": ISS}
    assert IdentityHeaders().values(None) == []


def test_client_id_of_is_the_first_string_among_client_id_and_azp() -> None:
    assert client_id_of(claims(client_id="app", azp="other")) == "app"
    assert client_id_of(claims(azp="web")) == "web"
    # a non-string client_id does not hide azp (the header, by contrast, renders it)
    assert client_id_of(claims(client_id=7, azp="web")) == "web"
    assert dict(IdentityHeaders().values(claims(client_id=7, azp="web")))["X-Auth-Client-Id"] == "7"
    assert client_id_of(claims(client_id=["a"])) is None
    assert client_id_of(claims(sub="s")) is None
    assert client_id_of(None) is None


def test_scp_list_scopes_are_sorted_and_space_joined() -> None:
    values = dict(IdentityHeaders().values(claims(scp=["b", "a c"], scope="z")))
    # "a c" is one (odd) member of scp: its space is encoded, so splitting gives it back
    assert values["X-Auth-Scopes"] == "a%20c b z"


def test_nested_arrays_numbers_and_objects() -> None:
    identity = IdentityHeaders.from_mapping(
        {
            "X-Auth-Roles": "realm_access.roles",
            "X-Auth-Tenant": "https://example.com/tenant",
            "X-Auth-Level": "level",
            "X-Auth-Admin": "flags.admin",
            "X-Auth-Org": "org",
            "X-Auth-Empty": "empty",
            "X-Auth-Missing": ["nothing", "nested.nothing"],
        }
    )
    values = dict(
        identity.values(
            claims(
                realm_access={"roles": ["a,b", "c"]},
                **{"https://example.com/tenant": "t1"},
                level=3,
                flags={"admin": True},
                org={"id": 7, "name": "Ä"},
                empty=[],
            )
        )
    )
    assert values == {
        "X-Auth-Roles": "a%2Cb,c",
        "X-Auth-Tenant": "t1",
        "X-Auth-Level": "3",
        "X-Auth-Admin": "true",
        "X-Auth-Org": "%7B%22id%22:7,%22name%22:%22%C3%84%22%7D".replace(",", "%2C"),
    }
    assert [unquote(m) for m in values["X-Auth-Roles"].split(",")] == ["a,b", "c"]


@pytest.mark.parametrize(
    ("claim", "encoded"),
    [
        ("admin\r\nX-Auth-Subject: root", "admin%0D%0AX-Auth-Subject:%20root"),
        ("a\x00b", "a%00b"),
        ("a,b", "a%2Cb"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("a+b", "a%2Bb"),
        ('q"\\', "q%22%5C"),
        ("café", "caf%C3%A9"),
        ("auth0|abc@x.example", "auth0%7Cabc@x.example"),
        ("https://issuer.example/a", "https://issuer.example/a"),
    ],
)
def test_encoding(claim: str, encoded: str) -> None:
    assert encode_value(claim) == encoded


_HEADER_VALUE_SAFE = set(string.ascii_letters + string.digits + "-._~!$&'()*;=:@/%")


@given(st.text())
def test_any_string_encodes_to_one_safe_token_that_round_trips(value: str) -> None:
    encoded = encode_value(value)
    assert set(encoded) <= _HEADER_VALUE_SAFE
    assert unquote(encoded, errors="surrogatepass") == value


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_any_array_splits_back_into_its_members(members: list[str]) -> None:
    identity = IdentityHeaders((HeaderSpec("X-Auth-Groups", ("groups",)),))
    [(_, value)] = identity.values(claims(groups=members))
    assert [unquote(m, errors="surrogatepass") for m in value.split(",")] == members


def test_header_spec_validation() -> None:
    with pytest.raises(ValueError, match="invalid header name"):
        HeaderSpec("X-Auth Subject", ("sub",))
    with pytest.raises(ValueError, match="names no claim"):
        HeaderSpec("X-Auth-Subject", ())
    with pytest.raises(ValueError, match="same name"):
        IdentityHeaders((HeaderSpec("X-A", ("sub",)), HeaderSpec("x_a", ("azp",))))


def test_without_a_prefix_only_the_configured_names_are_gateway_headers() -> None:
    identity = IdentityHeaders.from_mapping({"X-User": "sub"}, prefix=None)
    assert identity.is_gatekeeper_header("x_user")
    assert identity.is_gatekeeper_header(b"X-USER")
    assert not identity.is_gatekeeper_header("x-auth-role")


def test_raw_values_are_asgi_pairs() -> None:
    raw = IdentityHeaders().raw_values(claims(sub="s"))
    assert raw[0] == (b"x-auth-subject", b"s")


# -- rendered once per verified Claims object ------------------------------------------------------


def test_rendered_is_the_raw_values_and_is_kept_per_claims_object() -> None:
    identity = IdentityHeaders()
    alice = claims(sub="alice", scope="b a")
    first = identity.rendered(alice)
    assert list(first) == [(name.lower().encode(), value.encode()) for name, value in identity.values(alice)]
    assert identity.rendered(alice) is first  # the memo answered
    assert identity.raw_values(alice) == list(first)
    assert identity.rendered(None) == ()


def test_an_equal_but_different_claims_object_is_rendered_for_itself() -> None:
    identity = IdentityHeaders()
    a1, a2 = claims(sub="alice"), claims(sub="alice")
    assert identity.rendered(a1) is not identity.rendered(a2)
    assert dict(identity.rendered(claims(sub="bob")))[b"x-auth-subject"] == b"bob"
    assert dict(identity.rendered(a1))[b"x-auth-subject"] == b"alice"


def test_the_memo_is_bounded() -> None:
    identity = IdentityHeaders()
    kept = [claims(sub=f"user-{i}") for i in range(identity_module.MEMO_SIZE + 10)]
    for index, item in enumerate(kept):
        assert dict(identity.rendered(item))[b"x-auth-subject"] == f"user-{index}".encode()
    assert len(identity._memo) <= identity_module.MEMO_SIZE
    # the entries that were dropped render again, correctly
    assert dict(identity.rendered(kept[0]))[b"x-auth-subject"] == b"user-0"
