import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from consumer.outbox import WebhookSender, outbox_entry
from consumer.outcomes import Outcome, Tally
from consumer.webhook import (
    BACKOFF_MAX_S,
    WebhookPolicy,
    backoff_delay,
    deliver,
    webhook_client,
)
from rabbit_serve.messages import ClassifyResult
from rabbit_serve.settings import REPO_ROOT, Settings
from rabbit_serve.webhook_security import ID_HEADER, SIGNATURE_HEADER, verify
from tests.fakes import FakeInbound
from tests.tls import write_tls_files
from tests.webhook_receiver import webhook_receiver

# The receivers below listen on loopback, on a port of their own: the default policy
# refuses both, so these tests allow them.
LOCAL = WebhookPolicy(allow_private=True, allowed_ports=(), attempts=3, timeout=2)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def readme_verify() -> Callable[..., bool]:
    """The receiver's ``verify`` exactly as README.md's Webhooks section gives it."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n### Webhooks\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["verify"]  # type: ignore[return-value]


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(50) == BACKOFF_MAX_S


async def test_delivers_on_first_success_with_id_header():
    with webhook_receiver([200]) as hook:
        async with httpx.AsyncClient() as client:
            assert await deliver(client, hook.url, b'{"a":1}', policy=LOCAL, task_id="t-1")
        (hit,) = hook.hits
        assert hit.body == b'{"a":1}' and hit.headers[ID_HEADER.lower()] == "t-1"
        assert SIGNATURE_HEADER.lower() not in hit.headers  # no secret, no signature


async def test_posts_are_signed_for_their_url_when_a_secret_is_set():
    policy = WebhookPolicy(secret="s3cret", allow_private=True, allowed_ports=())
    with webhook_receiver([200]) as hook:
        async with httpx.AsyncClient() as client:
            assert await deliver(client, hook.url, b'{"x":2}', policy=policy)
        (hit,) = hook.hits
        header = hit.headers[SIGNATURE_HEADER.lower()]
        assert ",v2=" in header
        assert verify("s3cret", header, hit.body, hook.url)
        assert not verify("wrong", header, hit.body, hook.url)
        assert not verify("s3cret", header, hit.body, hook.url + "2")


async def test_the_readme_snippet_verifies_a_real_delivery_and_refuses_a_replay():
    """The attack: a receiver (or anyone on its path) captures a signed POST and replays
    it, body and signature header as they were, to another receiver that trusts the same
    secret. The README's own verify() must accept the original and refuse the replay."""
    readme_check = readme_verify()
    settings = Settings(webhook_secret="s3cret", webhook_allow_private=True)
    # The receivers' ports are their own: allow any, as WEBHOOK_ALLOWED_PORTS=* would.
    policy = replace(WebhookPolicy.from_settings(settings), allowed_ports=())
    result = ClassifyResult(id="t1", request_id="r1", index=0, predictions=[], batch_size=1)
    with webhook_receiver([200]) as hook, webhook_receiver([200]) as victim:
        async with webhook_client(settings) as client:
            # The real outbox sender, as a consumer runs it, POSTs the entry.
            tally = Tally()
            entry = outbox_entry(result, hook.url, "m")
            inbound = FakeInbound(entry.body, entry.headers, entry.message_id)
            await WebhookSender(client, policy, tally).on_entry(inbound)
            assert inbound.settled_as == "ack"
            assert tally.outcomes == {Outcome.WEBHOOK_DELIVERED: 1}
            (hit,) = hook.hits
            header = hit.headers[SIGNATURE_HEADER.lower()]
            # The replay: same bytes, same header, another URL.
            replayed = await client.post(
                victim.url, content=hit.body, headers={SIGNATURE_HEADER: header}
            )
            assert replayed.status_code == 200
        (copy,) = victim.hits
    assert readme_check("s3cret", header, hit.body, hook.url)
    assert copy.body == hit.body and copy.headers[SIGNATURE_HEADER.lower()] == header
    assert not readme_check("s3cret", header, copy.body, victim.url)
    # The snippet and the library agree, and both refuse stale timestamps.
    assert verify("s3cret", header, hit.body, hook.url)
    assert not verify("s3cret", header, copy.body, victim.url)
    stale = header.replace(header.split(",")[0], f"t={int(time.time()) - 301}")
    assert not readme_check("s3cret", stale, hit.body, hook.url)


async def test_retries_server_errors_then_succeeds():
    with webhook_receiver([503, 500, 204]) as hook:
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            assert await deliver(client, hook.url, b"{}", policy=LOCAL)
        assert len(hook.hits) == 3
        assert time.monotonic() - started >= backoff_delay(1) + backoff_delay(2)


async def test_gives_up_after_the_attempt_bound():
    with webhook_receiver([500]) as hook:
        async with httpx.AsyncClient() as client:
            policy = WebhookPolicy(allow_private=True, allowed_ports=(), attempts=2, timeout=2)
            assert not await deliver(client, hook.url, b"{}", policy=policy)
        assert len(hook.hits) == 2


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_client_errors_are_not_retried(status):
    with webhook_receiver([status]) as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", policy=LOCAL)
        assert len(hook.hits) == 1


async def test_redirects_are_not_followed():
    with webhook_receiver([302], location="http://169.254.169.254/latest") as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", policy=LOCAL)
        assert len(hook.hits) == 1


async def test_loopback_is_refused_by_the_default_policy():
    with webhook_receiver([200]) as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", policy=WebhookPolicy())
        assert hook.hits == []


async def test_a_port_off_the_list_is_refused_at_delivery():
    # Private addresses allowed, ports left at the default 80 and 443: the receiver's
    # own port is refused before any connection is made.
    policy = WebhookPolicy(allow_private=True)
    with webhook_receiver([200]) as hook:
        async with httpx.AsyncClient() as client:
            assert not await deliver(client, hook.url, b"{}", policy=policy)
            port = int(hook.url.rsplit(":", 1)[1].split("/")[0])
            listed = WebhookPolicy(allow_private=True, allowed_ports=(80, port))
            assert await deliver(client, hook.url, b"{}", policy=listed)
        assert len(hook.hits) == 1  # only the listed one got through


def test_the_policy_follows_the_settings():
    settings = Settings(
        webhook_secret="s",
        webhook_allowed_hosts="a.example",
        webhook_allowed_ports="443",
        webhook_max_attempts=4,
        webhook_timeout=2.5,
    )
    assert WebhookPolicy.from_settings(settings) == WebhookPolicy(
        secret="s", allowed_hosts=("a.example",), allowed_ports=(443,), attempts=4, timeout=2.5
    )
    assert WebhookPolicy.from_settings(Settings()).allowed_ports == (80, 443)
    assert WebhookPolicy.from_settings(Settings(webhook_allowed_ports="*")).allowed_ports == ()


@pytest.mark.parametrize("trust_env", [False, True])
async def test_proxy_variables_are_ignored_unless_trusted(monkeypatch, trust_env):
    """The attack: HTTP(S)_PROXY in the consumer's environment (set for something else)
    sends webhook POSTs to a proxy, which connects from inside the network, instead of
    to the checked address. By default the client connects to the receiver itself."""
    with webhook_receiver([200]) as hook, webhook_receiver([200]) as proxy:
        proxy_base = proxy.url.rsplit("/", 1)[0]
        for name in PROXY_VARS:
            monkeypatch.setenv(name, proxy_base)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with webhook_client(Settings(webhook_trust_env=trust_env)) as client:
            assert await deliver(client, hook.url, b'{"p":1}', policy=LOCAL)
        if trust_env:
            # The control: with WEBHOOK_TRUST_ENV the same variables do route it.
            assert hook.hits == [] and [h.body for h in proxy.hits] == [b'{"p":1}']
        else:
            assert proxy.hits == [] and [h.body for h in hook.hits] == [b'{"p":1}']


@contextmanager
def tls_receiver(tmp_path: Path) -> Iterator[tuple[str, Path, list[bytes]]]:
    """An HTTPS receiver on 127.0.0.1 with a certificate from a throwaway CA; yields its
    URL, the CA file and the bodies it got."""
    paths = write_tls_files(
        tmp_path, x509.IPAddress(ipaddress.ip_address("127.0.0.1")), "webhook test CA"
    )
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["cert"], paths["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/hook", paths["ca"], bodies
    finally:
        server.shutdown()
        server.server_close()


async def test_ca_variables_are_still_honoured_without_trust_env(monkeypatch, tmp_path):
    # Not trusting the environment's proxies must not drop a private CA the operator
    # gave with SSL_CERT_FILE: that says whom to trust, not where to connect.
    once = WebhookPolicy(allow_private=True, allowed_ports=(), attempts=1, timeout=2)
    with tls_receiver(tmp_path) as (url, ca_file, bodies):
        async with webhook_client(Settings()) as client:
            assert not await deliver(client, url, b"{}", policy=once)  # an unknown CA
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        async with webhook_client(Settings()) as client:
            assert await deliver(client, url, b'{"tls":1}', policy=once)
    assert bodies == [b'{"tls":1}']


async def test_unreachable_webhook_fails_within_the_bound():
    async with httpx.AsyncClient() as client:
        # Port 9 (discard) is closed on loopback: connection refused at once.
        policy = WebhookPolicy(allow_private=True, allowed_ports=(), attempts=2, timeout=1)
        assert not await deliver(client, "http://127.0.0.1:9/x", b"{}", policy=policy)
