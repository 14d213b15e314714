"""Under concurrency every request gets its own answer, and real batches form."""

import asyncio
import base64
import random
from collections import Counter

import pytest

from tests.images import CAT_CLASSES, ESPRESSO, variants

pytestmark = pytest.mark.integration


async def test_64_concurrent_distinct_images_each_get_their_own_answer(main_url, client):
    cats = variants("chelsea.jpg", 32)
    coffees = variants("coffee.jpg", 32)
    requests = [(img, "cat") for img in cats] + [(img, "espresso") for img in coffees]
    random.Random(7).shuffle(requests)

    async def classify(image: bytes) -> dict:
        response = await client.post(
            f"{main_url}/v1/classify",
            json={"image": base64.b64encode(image).decode(), "top_k": 1},
        )
        assert response.status_code == 200, response.text
        return response.json()

    bodies = await asyncio.gather(*(classify(img) for img, _ in requests))

    assert len({b["id"] for b in bodies}) == 64
    for (_, expected), body in zip(requests, bodies, strict=True):
        top = body["predictions"][0]["class_id"]
        if expected == "cat":
            assert top in CAT_CLASSES, body
        else:
            assert top == ESPRESSO, body
    sizes = Counter(b["batch_size"] for b in bodies)
    # Measured, not assumed: with 64 requests in flight, the consumer must have
    # grouped some of them (MAX_BATCH_SIZE is 8 in this suite).
    assert max(sizes) > 1, f"no batch larger than 1 formed: {sizes}"
    assert max(sizes) <= 8, sizes
    print(f"batch sizes seen by 64 concurrent requests: {dict(sorted(sizes.items()))}")


async def test_results_reach_the_replica_that_holds_the_request(main_url, client):
    # Two ingress replicas, each with its own reply queue. Had a result gone to the
    # other replica, its request would have timed out instead of answering.
    image = base64.b64encode(variants("coffee.jpg", 1)[0]).decode()
    replies = set()
    for _ in range(20):
        stats = (await client.get(f"{main_url}/v1/stats")).json()
        replies.add(stats["reply_queue"])
        response = await client.post(f"{main_url}/v1/classify", json={"image": image})
        assert response.status_code == 200
    assert len(replies) == 2, f"expected two ingress replicas, saw {replies}"
