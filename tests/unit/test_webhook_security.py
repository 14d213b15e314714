import socket

import pytest

from rabbit_serve.webhook_security import (
    WebhookRefused,
    check_url,
    host_allowed,
    is_public,
    resolve,
    sign,
    verify,
)


@pytest.mark.parametrize(
    "host,allowed,ok",
    [
        ("hooks.example.com", (), True),
        ("hooks.example.com", ("hooks.example.com",), True),
        ("HOOKS.example.com.", ("hooks.example.com",), True),
        ("a.b.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),
        ("badexample.com", ("*.example.com",), False),
        ("example.com.evil.net", ("example.com",), False),
    ],
)
def test_host_allowlist(host, allowed, ok):
    assert host_allowed(host, allowed) is ok


@pytest.mark.parametrize(
    "address,public",
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_public_addresses(address, public):
    assert is_public(address) is public


def test_check_url_rejects_non_http_and_credentials():
    for url in ("ftp://x.example/y", "file:///etc/passwd", "//x", "https://u:p@x.example/"):
        with pytest.raises(WebhookRefused):
            check_url(url, (), False)


async def test_resolution_refuses_names_that_point_inside():
    # "localhost" is refused by name; a name resolving to loopback is refused by address.
    with pytest.raises(WebhookRefused, match="localhost"):
        await resolve("http://localhost/x", (), False)
    # This machine's own name resolves locally (to loopback or a private address).
    with pytest.raises(WebhookRefused, match="non-public"):
        await resolve(f"http://{socket.gethostname()}/x", (), False)


async def test_resolution_when_private_is_allowed():
    assert "127.0.0.1" in await resolve("http://127.0.0.1:9/x", (), True)


async def test_unresolvable_host_is_refused():
    with pytest.raises(WebhookRefused, match="does not resolve"):
        await resolve("https://no-such-host.invalid/x", (), False)


def test_signature_roundtrip_and_tampering():
    body = b'{"id":"abc"}'
    header = sign("s3cret", body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify("s3cret", header, body, now=1_700_000_010)
    assert not verify("s3cret", header, body + b" ", now=1_700_000_010)
    assert not verify("other", header, body, now=1_700_000_010)
    # Replays older than the tolerance are refused.
    assert not verify("s3cret", header, body, now=1_700_000_000 + 301)
    for broken in ("", "t=abc,v1=00", "v1=00", "t=1700000000"):
        assert not verify("s3cret", broken, body, now=1_700_000_000)
