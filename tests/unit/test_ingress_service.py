"""Publish, then wait: the orchestration behind POST /v1/classify, with a fake publisher."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from ingress.parsing import ParsedRequest
from rabbit_serve.errors import ClientError
from rabbit_serve.settings import Settings
from tests.ingress_fakes import ESPRESSO, answer_all, failing, make_service

IMAGE = b"\xff\xd8 image"


def parsed(count: int = 1, *, multi: bool = False, callback_url: str | None = None):
    return ParsedRequest([IMAGE] * count, top_k=5, callback_url=callback_url, multi=multi)


async def classify(service, request, header: str | None = None):
    return await service.classify(request, header, time.perf_counter())


async def test_one_image_is_published_then_answered():
    service, producer = make_service()
    rendered = await classify(service, parsed())
    assert rendered.status == 200
    body = orjson.loads(rendered.body)
    assert body["predictions"] == ESPRESSO and body["model"] == "efficientnet-lite0"
    (task,) = producer.tasks
    assert task.reply_to == producer.reply_queue and task.image == IMAGE
    assert task.id == f"{body['id']}-0"
    assert len(service._pending) == 0


async def test_a_per_image_error_alone_is_the_request_status():
    service, _ = make_service(answer=failing(422, "image could not be decoded"))
    rendered = await classify(service, parsed())
    assert rendered.status == 422
    assert orjson.loads(rendered.body) == {"detail": "image could not be decoded"}


async def test_publish_failure_is_a_503_with_retry_after_and_nothing_left_waiting():
    service, _ = make_service(fail="the request queue is full; retry after the Retry-After delay")
    for request in (parsed(), parsed(3, multi=True)):
        rendered = await classify(service, request)
        assert rendered.status == 503 and (rendered.headers or {})["Retry-After"] == "1"
        assert (rendered.headers or {})["Server-Timing"].startswith("publish;dur=")
        assert "queue is full" in orjson.loads(rendered.body)["detail"]
        assert len(service._pending) == 0


async def test_publish_failure_for_a_webhook_request_is_a_503():
    settings = Settings(webhook_allow_private=True, webhook_allowed_ports="*")
    service, _ = make_service(settings, fail="message broker is not reachable")
    rendered = await classify(service, parsed(callback_url="http://127.0.0.1:9/hook"))
    assert rendered.status == 503 and (rendered.headers or {})["Retry-After"] == "1"
    assert (rendered.headers or {})["Server-Timing"].startswith("publish;dur=")


async def test_no_answer_within_timeout_is_a_504_and_the_waiter_is_forgotten():
    service, producer = make_service(Settings(timeout=0.2), answer=lambda task: None)
    started = time.monotonic()
    rendered = await classify(service, parsed())
    assert 0.2 <= time.monotonic() - started
    assert rendered.status == 504
    assert orjson.loads(rendered.body) == {"detail": "no answer within TIMEOUT=0.2s"}
    assert len(producer.tasks) == 1 and len(service._pending) == 0


async def test_several_images_time_out_one_by_one():
    def every_other(task):
        return None if task.index % 2 else failing(413, "too big")(task)

    service, _ = make_service(Settings(timeout=0.2), answer=every_other)
    rendered = await classify(service, parsed(3, multi=True))
    assert rendered.status == 200
    results = orjson.loads(rendered.body)["results"]
    assert [r["error"]["status"] for r in results] == [413, 504, 413]
    assert results[1]["error"]["message"] == "no answer within TIMEOUT=0.2s"


async def test_a_cancelled_request_forgets_its_futures():
    service, producer = make_service(answer=lambda task: None)
    request = asyncio.create_task(classify(service, parsed(4, multi=True)))
    for _ in range(500):
        if len(producer.tasks) == 4:
            break
        await asyncio.sleep(0.01)
    assert len(service._pending) == 4
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert len(service._pending) == 0
    # A result arriving now is late: counted, not kept.
    assert not service._pending.resolve(answer_all(producer.tasks[0]))
    assert service._pending.late == 1


async def test_a_request_start_older_than_timeout_is_a_504_without_publishing():
    service, producer = make_service(Settings(timeout=2))
    rendered = await classify(service, parsed(), f"t={time.time() - 5}")
    assert rendered.status == 504 and producer.published == []
    assert orjson.loads(rendered.body) == {"detail": "no answer within TIMEOUT=2s"}


async def test_the_deadline_counts_from_the_front_proxys_stamp():
    service, producer = make_service(Settings(timeout=10))
    stamp = time.time() - 4
    await classify(service, parsed(), f"t={stamp * 1000:.0f}")
    (task,) = producer.tasks
    assert task.deadline == pytest.approx(stamp + 10, abs=0.01)
    # The broker drops it when nobody waits any more.
    assert producer.published[0].expiration == pytest.approx(6, abs=0.1)


async def test_a_future_stamp_cannot_lengthen_the_deadline():
    service, producer = make_service(Settings(timeout=10))
    before = time.time()
    await classify(service, parsed(), f"t={time.time() + 100}")
    # The task carries times in whole milliseconds.
    assert before + 10 - 0.001 <= producer.tasks[0].deadline <= time.time() + 10 + 0.001


async def test_a_webhook_request_is_accepted_at_once():
    service, producer = make_service(
        Settings(webhook_allow_private=True, webhook_allowed_ports="*"), answer=None
    )
    rendered = await classify(service, parsed(2, multi=True, callback_url="http://127.0.0.1:9/x"))
    assert rendered.status == 202
    body = orjson.loads(rendered.body)
    assert body["task_ids"] == [t.id for t in producer.tasks]
    assert all(
        t.reply_to is None and t.callback_url == "http://127.0.0.1:9/x" for t in producer.tasks
    )
    assert len(service._pending) == 0


async def test_a_webhook_host_that_resolves_to_a_private_address_is_a_422():
    service, producer = make_service(Settings(webhook_allow_private=False))
    with pytest.raises(ClientError) as info:
        await classify(service, parsed(callback_url="http://localhost:9/x"))
    assert info.value.status == 422 and producer.published == []


async def test_several_images_go_out_as_one_bundle_message():
    service, producer = make_service()
    request = ParsedRequest([b"\xff\xd8 a", b"\xff\xd8 bb"], 5, None, True, [640, 1200])
    rendered = await classify(service, request)
    assert rendered.status == 200
    (message,) = producer.published  # one message, one confirm: all or nothing
    request_id = orjson.loads(rendered.body)["id"]
    assert message.message_id == request_id
    assert [t.id for t in producer.tasks] == [f"{request_id}-0", f"{request_id}-1"]
    assert [t.pixels for t in producer.tasks] == [640, 1200]


async def test_one_image_stays_one_plain_task_message_with_its_pixels():
    service, producer = make_service()
    await classify(service, ParsedRequest([IMAGE], 5, None, False, [50176]))
    (message,) = producer.published
    assert "rs-sizes" not in message.headers and message.headers["rs-pixels"] == 50176
    assert producer.tasks[0].pixels == 50176


async def test_a_webhook_job_lives_for_webhook_job_ttl_not_timeout():
    settings = Settings(
        webhook_allow_private=True, webhook_allowed_ports="*", timeout=10, webhook_job_ttl=7200
    )
    service, producer = make_service(settings)
    await classify(service, parsed(2, multi=True, callback_url="http://127.0.0.1:9/x"))
    (message,) = producer.published
    assert message.expiration == pytest.approx(7200, abs=0.01)
    for task in producer.tasks:
        assert task.deadline - task.sent_at == pytest.approx(7200, abs=0.01)


async def test_a_sync_task_expires_after_timeout():
    service, producer = make_service(Settings(timeout=3))
    await classify(service, parsed())
    assert producer.published[0].expiration == pytest.approx(3, abs=0.05)


async def test_a_refused_bundle_queues_nothing_and_its_503_says_so():
    service, producer = make_service(fail="the request queue is full")
    rendered = await classify(service, parsed(3, multi=True))
    assert rendered.status == 503 and producer.published == []
    assert "may have queued" not in orjson.loads(rendered.body)["detail"]
