"""amqps:// works end to end: a real TLS handshake, certificate checked against a CA.

The machine's broker speaks plain AMQP, so the test puts a TLS-terminating proxy
(its own certificate, signed by a throwaway CA) in front of it on loopback.
"""

import asyncio
import contextlib
import ssl
import uuid

import aio_pika
import pytest
from cryptography import x509

from ingress.producer import Producer
from rabbit_serve.errors import ServiceUnavailable
from rabbit_serve.messages import encode_task
from rabbit_serve.settings import Settings
from tests.factories import make_task
from tests.tls import write_tls_files

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_files(tmp_path):
    return write_tls_files(tmp_path, x509.DNSName("localhost"), "rabbit-serve test CA")


@contextlib.asynccontextmanager
async def tls_proxy(cert, key, upstream_port: int = 5672):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handshakes = []

    async def pipe(reader, writer):
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_reader, client_writer):
        handshakes.append(client_writer.get_extra_info("ssl_object").version())
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], handshakes
    finally:
        server.close()


async def test_amqps_with_a_verified_certificate(tls_files):
    name = f"rabbit-serve-test-{uuid.uuid4().hex[:8]}"
    async with tls_proxy(tls_files["cert"], tls_files["key"]) as (port, handshakes):
        url = f"amqps://guest:guest@localhost:{port}/%2F?cafile={tls_files['ca']}"
        settings = Settings(
            amqp_url=url, request_queue=f"{name}.requests", dead_letter_queue=f"{name}.dead"
        )
        producer = Producer(settings, "tls", lambda r: None)
        await producer.start()
        try:
            assert producer.ready
            await producer.publish(encode_task(make_task(producer.reply_queue)))
            assert handshakes and handshakes[0].startswith("TLS")
        finally:
            await producer.close()
        # Plain-AMQP cleanup of the test queues.
        connection = await aio_pika.connect(Settings().amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(settings.request_queue)
            await channel.queue_delete(settings.dead_letter_queue)


async def test_amqps_refuses_an_untrusted_certificate(tls_files):
    async with tls_proxy(tls_files["cert"], tls_files["key"]) as (port, _):
        # No cafile: the system trust store does not know the test CA.
        settings = Settings(
            amqp_url=f"amqps://guest:guest@localhost:{port}/%2F", broker_connect_timeout=2
        )
        producer = Producer(settings, "tls-untrusted", lambda r: None)
        await producer.start()
        try:
            assert not producer.ready
            with pytest.raises(ServiceUnavailable):
                await producer.publish(encode_task(make_task(producer.reply_queue)))
        finally:
            await producer.close()
