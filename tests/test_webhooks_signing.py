"""The pure parts of webhook delivery, and one delivery over real TLS to a pinned address.

Signatures are checked with the ``standardwebhooks`` package, backoff against
its formula, and the address pinning (DNS rebinding defence) against a real
HTTPS receiver whose certificate names ``localhost`` only: the connection
goes to the checked IP while TLS still verifies the URL's host name.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.http.webhooks import new_secret
from sync.webhook_delivery import (
    Outcome,
    RetryPolicy,
    pinned,
    post,
    signed_headers,
    signing_secrets,
)
from tests.support.webhook_receiver import Receiver


def test_the_signature_verifies_with_the_standardwebhooks_package():
    secret = new_secret()
    assert secret.startswith("whsec_")
    now = datetime.now(UTC)
    body = '{"id":7,"type":"record.created","data":{"名":"太郎"}}'.encode()
    headers = signed_headers([secret], "msg_7", now, body)
    assert headers["webhook-id"] == "msg_7"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["data"] == {"名": "太郎"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"7", b"8"), headers)


def test_during_a_rotation_both_secrets_sign_and_after_it_only_the_new_one():
    old, new = new_secret(), new_secret()
    now = datetime.now(UTC)
    endpoint = {
        "secret": new,
        "previous_secret": old,
        "previous_secret_until": now + timedelta(hours=1),
    }
    assert signing_secrets(endpoint, now) == [new, old]
    headers = signed_headers(signing_secrets(endpoint, now), "msg_1", now, b"{}")
    Webhook(old).verify(b"{}", headers)
    Webhook(new).verify(b"{}", headers)
    assert signing_secrets(endpoint, now + timedelta(hours=2)) == [new]


def test_backoff_doubles_from_the_base_up_to_the_cap():
    policy = RetryPolicy(base=10, cap=3600, disable_after=5 * 86400)
    assert [policy.delay(n).total_seconds() for n in range(1, 11)] == [
        10,
        20,
        40,
        80,
        160,
        320,
        640,
        1280,
        2560,
        3600,
    ]
    start = datetime(2026, 11, 1, tzinfo=UTC)
    assert not policy.gives_up(start, start + timedelta(days=5) - timedelta(seconds=1))
    assert policy.gives_up(start, start + timedelta(days=5))


@pytest.mark.parametrize(
    ("url", "address", "expected"),
    [
        (
            "http://hooks.example/x?a=1",
            "93.184.216.34",
            ("http://93.184.216.34/x?a=1", "hooks.example", "hooks.example"),
        ),
        (
            "https://hooks.example:8443/p",
            "2001:db8::1",
            ("https://[2001:db8::1]:8443/p", "hooks.example:8443", "hooks.example"),
        ),
    ],
)
def test_a_delivery_is_aimed_at_the_checked_address_with_the_urls_host_name(url, address, expected):
    assert pinned(url, address) == expected


@pytest.fixture(scope="module")
def tls_receiver(tmp_path_factory):
    """An HTTPS receiver whose certificate names ``localhost`` (no IP): SNI must say so."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    receiver = Receiver(tls=server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(cert_file))
    yield receiver, client_ctx
    receiver.close()


def test_https_goes_to_the_checked_address_and_still_verifies_the_host_name(tls_receiver):
    receiver, client_ctx = tls_receiver
    secret = new_secret()
    receiver.secrets["/tls"] = secret
    body = b'{"id":1}'

    async def send(ctx: ssl.SSLContext):
        async with httpx.AsyncClient(verify=ctx, trust_env=False) as client:
            headers = signed_headers([secret], "msg_1", datetime.now(UTC), body)
            return await post(
                client, receiver.url("/tls"), body, headers, timeout=5, allow_private=True
            )

    attempt = asyncio.run(send(client_ctx))
    assert attempt.outcome == Outcome.DELIVERED, attempt
    (hit,) = receiver.at("/tls")
    assert hit.verified and hit.body == body
    # A certificate the client does not trust: a failure, not a delivery.
    refused = asyncio.run(send(ssl.create_default_context()))
    assert refused.outcome == Outcome.UNREACHABLE
    assert len(receiver.at("/tls")) == 1
