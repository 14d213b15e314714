import hashlib
import hmac
import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rabbit_serve.webhook_security import (
    WebhookRefused,
    check_url,
    host_allowed,
    is_numeric_host,
    is_public,
    resolve,
    sign,
    verify,
)

PORTS = (80, 443)  # the default WEBHOOK_ALLOWED_PORTS


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
        ("::ffff:8.8.8.8", True),  # IPv4-mapped: judged as the IPv4 address it maps
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
        # What is_global lets through on Python 3.11: refused whatever they embed.
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::8.8.8.8", False),
        ("::ffff:0:7f00:1", False),  # IPv4-translated (SIIT)
        ("64:ff9b::7f00:1", False),  # NAT64
        ("64:ff9b::8.8.8.8", False),
        ("64:ff9b:1::a00:1", False),  # NAT64, local use
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("fec0::1", False),  # site-local
        ("192.88.99.1", False),  # 6to4 relay anycast
        ("3fff::1", False),  # documentation
        ("ff0e::1", False),  # global-scope multicast
    ],
)
def test_public_addresses(address, public):
    assert is_public(address) is public


def test_check_url_rejects_non_http_and_credentials():
    for url in ("ftp://x.example/y", "file:///etc/passwd", "//x", "https://u:p@x.example/"):
        with pytest.raises(WebhookRefused):
            check_url(url, (), False)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::127.0.0.1]/x",
        "http://[64:ff9b::a9fe:a9fe]/latest",  # NAT64 of 169.254.169.254
        "http://[2002:a00:1::1]/x",
        "http://[fec0::1]/x",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x",
        "http://[::ffff:169.254.169.254]/latest",
        "http://foo.localhost/x",
    ],
)
def test_literal_v6_encodings_are_refused_before_any_lookup(url):
    with pytest.raises(WebhookRefused, match=r"non-public|localhost"):
        check_url(url, (), False, PORTS)


# -- property tests over address encodings -------------------------------------------

INSIDE_V4 = [
    ipaddress.IPv4Network(net)
    for net in (
        "127.0.0.0/8",  # loopback
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",  # link-local, cloud metadata
        "100.64.0.0/10",  # carrier-grade NAT
        "0.0.0.0/8",
    )
]


@st.composite
def inside_v4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    net = draw(st.sampled_from(INSIDE_V4))
    offset = draw(st.integers(0, net.num_addresses - 1))
    return net[offset]


any_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


def v6_texts(ip: ipaddress.IPv6Address) -> list[str]:
    """Ways to write one IPv6 address: compressed, exploded, upper case, and with its
    last 32 bits as a dotted quad."""
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    head = ip.exploded.rsplit(":", 2)[0]
    return [ip.compressed, ip.exploded, ip.compressed.upper(), f"{head}:{low}"]


def embeddings(v4: ipaddress.IPv4Address, suffix: int) -> dict[str, ipaddress.IPv6Address]:
    n = int(v4)
    return {
        "mapped": ipaddress.IPv6Address(0xFFFF << 32 | n),
        "compatible": ipaddress.IPv6Address(n),
        "translated": ipaddress.IPv6Address(0xFFFF << 48 | n),
        "nat64": ipaddress.IPv6Address(0x64FF9B << 96 | n),
        "nat64-local": ipaddress.IPv6Address(0x64FF9B0001 << 80 | (suffix & 0xFFFF) << 32 | n),
        "6to4": ipaddress.IPv6Address(0x2002 << 112 | n << 80 | (suffix & (2**80 - 1))),
        # Teredo: server address in bits 64..95, client address obfuscated (xor) at the end.
        "teredo": ipaddress.IPv6Address(
            0x20010000 << 96 | n << 64 | (suffix & 0xFFFFFFFF) << 32 | (n ^ 0xFFFFFFFF)
        ),
    }


@given(inside_v4(), st.integers(0, 2**80 - 1))
def test_every_v6_encoding_of_an_inside_v4_address_is_refused(v4, suffix):
    for kind, ip in embeddings(v4, suffix).items():
        for text in v6_texts(ip):
            assert not is_public(text), (kind, text)
            with pytest.raises(WebhookRefused, match="non-public"):
                check_url(f"http://[{text}]:443/hook", (), False, PORTS)


@given(any_v4, st.integers(0, 2**80 - 1))
def test_translator_forms_are_refused_even_around_a_public_v4(v4, suffix):
    # Refused, not unwrapped: a translator or relay we cannot see picks the last hop.
    # Only the mapped form is unwrapped, as a dual-stack socket connects to its IPv4.
    forms = embeddings(v4, suffix)
    assert is_public(str(forms.pop("mapped"))) is is_public(str(v4))
    for kind, ip in forms.items():
        assert not is_public(str(ip)), kind


def integer_forms(ip: ipaddress.IPv4Address) -> list[str]:
    """What inet_aton (and so the resolver, and a WHATWG URL parser) reads as ``ip``."""
    a, b, c, d = ip.packed
    n = int(ip)
    return [
        str(n),  # 2130706433
        hex(n),  # 0x7f000001
        f"0{n:o}",  # 017700000001
        f"0{a:o}.0{b:o}.0{c:o}.0{d:o}",  # 0177.00.00.01
        f"{hex(a)}.{hex(b)}.{hex(c)}.{hex(d)}",  # 0x7f.0x0.0x0.0x1
        f"{a}.{b << 16 | c << 8 | d}",  # 127.1
        f"{hex(a)}.{b << 16 | c << 8 | d}",  # 0x7f.1
        f"{a}.{b}.{c << 8 | d}",  # 127.0.1
        f"{a}.{b}.{c}.{d}.",  # a trailing dot
    ]


# Full-width digits, letters and dots: the IDNA codec maps them back to ASCII.
FULL_WIDTH = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in "0123456789abcdefx"} | {".": "\u3002"})


@given(inside_v4(), st.booleans())
def test_integer_host_forms_are_refused_before_any_lookup(v4, full_width):
    for form in integer_forms(v4):
        if not form.endswith("."):
            # The form is real: the C library reads it as this very address.
            assert socket.inet_aton(form) == v4.packed, form
        if full_width:
            form = form.translate(FULL_WIDTH)
        for allow_private in (False, True):
            with pytest.raises(WebhookRefused):
                check_url(f"http://{form}/hook", (), allow_private, PORTS)


@pytest.mark.parametrize(
    "form",
    ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "127.0.0.1.", "\uff11\uff12\uff17\u3002\uff11"],
)
async def test_integer_host_forms_never_reach_the_resolver(form):
    with pytest.raises(WebhookRefused, match=r"number|non-public"):
        await resolve(f"http://{form}/x", (), False, PORTS)


@pytest.mark.parametrize(
    "host,numeric",
    [
        ("hooks.example.com", False),
        ("1e100.net", False),
        ("a.123", True),
        ("0x", True),
        ("\uff11\uff12\uff17\u3002\uff11", True),  # full-width "127.1", read by IDNA
    ],
)
def test_numeric_host(host, numeric):
    assert is_numeric_host(host) is numeric


# -- ports -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example/x",
        "http://hooks.example/x",
        "https://hooks.example:443/x",
        "http://hooks.example:443/x",  # the list is of ports, whatever the scheme
    ],
)
def test_allowed_ports_pass(url):
    assert check_url(url, (), False, PORTS) == "hooks.example"


@pytest.mark.parametrize(
    "url,port",
    [
        ("https://hooks.example:8443/x", "8443"),
        ("http://hooks.example:6379/x", "6379"),  # redis on a public address
        ("http://hooks.example:0/x", "0"),
        ("http://8.8.8.8:22/x", "22"),
    ],
)
def test_ports_off_the_list_are_refused(url, port):
    with pytest.raises(WebhookRefused, match=f"port {port} is not in WEBHOOK_ALLOWED_PORTS"):
        check_url(url, (), False, PORTS)
    assert check_url(url, (), False, ()) == url.split("//")[1].split(":")[0]  # "*": any


@given(st.integers(1, 65535))
def test_any_port_but_the_listed_ones_is_refused(port):
    url = f"https://hooks.example:{port}/x"
    if port in PORTS:
        assert check_url(url, (), False, PORTS) == "hooks.example"
    else:
        with pytest.raises(WebhookRefused, match="WEBHOOK_ALLOWED_PORTS"):
            check_url(url, (), False, PORTS)


def test_an_invalid_port_is_refused():
    for url in ("http://hooks.example:99999/x", "http://hooks.example:abc/x"):
        with pytest.raises(WebhookRefused, match="invalid port"):
            check_url(url, (), False, PORTS)


async def test_the_port_is_checked_before_the_name_is_resolved():
    with pytest.raises(WebhookRefused, match="port 9 is not"):
        await resolve("http://no-such-host.invalid:9/x", (), False, PORTS)


# -- resolution ------------------------------------------------------------------------


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


# -- signatures ------------------------------------------------------------------------

URL = "https://hooks.example.com/rabbit?tenant=7"


def test_the_signed_string_is_timestamp_url_and_body():
    body = b'{"id":"abc"}'
    header = sign("s3cret", body, URL, timestamp=1_700_000_000)
    expected = hmac.new(
        b"s3cret", b"1700000000." + URL.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert header == f"t=1700000000,v2={expected}"


def test_signature_roundtrip_and_tampering():
    body = b'{"id":"abc"}'
    header = sign("s3cret", body, URL, timestamp=1_700_000_000)
    assert verify("s3cret", header, body, URL, now=1_700_000_010)
    assert not verify("s3cret", header, body + b" ", URL, now=1_700_000_010)
    assert not verify("other", header, body, URL, now=1_700_000_010)
    # Replays older than the tolerance are refused.
    assert not verify("s3cret", header, body, URL, now=1_700_000_000 + 301)
    for broken in ("", "t=abc,v2=00", "v2=00", "t=1700000000"):
        assert not verify("s3cret", broken, body, URL, now=1_700_000_000)


@pytest.mark.parametrize(
    "other",
    [
        "https://victim.example.net/rabbit?tenant=7",  # another receiver
        "https://hooks.example.com/rabbit?tenant=8",  # another tenant of the same one
        "https://hooks.example.com/rabbit",
        "http://hooks.example.com/rabbit?tenant=7",
    ],
)
def test_a_body_signed_for_one_url_does_not_verify_at_another(other):
    body = b'{"id":"abc"}'
    header = sign("s3cret", body, URL, timestamp=1_700_000_000)
    assert not verify("s3cret", header, body, other, now=1_700_000_000)


def test_the_unbound_v1_scheme_is_gone():
    # A v1 signature (timestamp and body only) is not accepted in place of v2.
    body = b'{"id":"abc"}'
    v1 = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert not verify("s3cret", f"t=1700000000,v1={v1}", body, URL, now=1_700_000_000)
