"""The classifier probe behind /healthz and /v1/model: never a silent failure."""

from __future__ import annotations

import asyncio
import logging

from ingress.health import ClassifierProbe


class Classifier:
    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.delay = 0.0

    async def info(self) -> dict:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return {"name": "m"}


async def test_an_answer_is_returned_without_a_reason():
    assert await ClassifierProbe(Classifier().info).check() == ({"name": "m"}, None)


async def test_a_slow_classifier_is_a_timeout_reason():
    classifier = Classifier()
    classifier.delay = 1
    assert await ClassifierProbe(classifier.info, timeout=0.05).check() == (
        None,
        "classifier did not answer within 0.05s",
    )


async def test_an_error_is_named_with_its_first_line_only():
    classifier = Classifier()
    classifier.error = RuntimeError("The actor died unexpectedly.\n  File ...\n  more")
    info, reason = await ClassifierProbe(classifier.info).check()
    assert info is None
    assert reason == "classifier unavailable: RuntimeError: The actor died unexpectedly."


async def test_an_error_without_text_still_names_its_type():
    classifier = Classifier()
    classifier.error = ConnectionError()
    assert (await ClassifierProbe(classifier.info).check())[1] == (
        "classifier unavailable: ConnectionError"
    )


async def test_a_warning_when_the_reason_changes_not_on_every_probe(caplog):
    classifier = Classifier()
    probe = ClassifierProbe(classifier.info, timeout=0.05)
    caplog.set_level(logging.INFO, logger="rabbit_serve.ingress")
    classifier.error = RuntimeError("no replicas")
    for _ in range(3):
        await probe.check()
    classifier.error = None
    classifier.delay = 1
    await probe.check()
    classifier.delay = 0
    assert (await probe.check())[1] is None
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "classifier not ready: classifier unavailable: RuntimeError: no replicas"),
        ("WARNING", "classifier not ready: classifier did not answer within 0.05s"),
        ("INFO", "classifier ready again"),
    ]
