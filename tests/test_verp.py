"""VERP return paths: our outbound mail's bounce address names the send."""

import pytest

from gateway.bounces import verp_address, verp_token

DOMAIN = "mailgate.localhost"


def test_address_round_trips_to_token():
    address = verp_address("s-42.AbC", DOMAIN)
    assert address == "bounces+s-42.AbC@mailgate.localhost"
    assert verp_token(address, DOMAIN) == "s-42.AbC"


@pytest.mark.parametrize(
    "address",
    [
        "<bounces+tok1@mailgate.localhost>",
        "bounces+tok1@MAILGATE.LOCALHOST",
        '"bounces+tok1"@mailgate.localhost',
        "BOUNCES+tok1@mailgate.localhost.",
        "  bounces+tok1@mailgate.localhost  ",
    ],
)
def test_token_is_read_from_what_mtas_hand_us(address):
    assert verp_token(address, DOMAIN) == "tok1"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "bounces@mailgate.localhost",
        "bounces+@mailgate.localhost",
        "bounces+tok1@other.example",
        "bounces+tok1@evil.mailgate.localhost",
        "dropbox-abc@mailgate.localhost",
        "bounces+to k@mailgate.localhost",
        "bounces+tok1",
        "@mailgate.localhost",
    ],
)
def test_anything_else_is_not_a_verp_address(address):
    assert verp_token(address, DOMAIN) is None


def test_unsafe_tokens_are_refused_when_building():
    with pytest.raises(ValueError):
        verp_address("a@b", DOMAIN)
    with pytest.raises(ValueError):
        verp_address("", DOMAIN)
