"""The peer the benchmark compares against: the same model in a plain Ray Serve app.

What a competent user would write without a queue: a FastAPI ingress that decodes
the base64 image, and a classifier deployment that batches with ``@serve.batch``.
It shares the model wrapper, preprocessing and post-processing with the pipeline,
so the comparison isolates the architecture.
"""

import asyncio
import base64

import orjson
from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.onnx_model import OnnxClassifier
from rabbit_serve.messages import ErrorInfo
from rabbit_serve.settings import Settings

peer_app = FastAPI(title="plain Serve peer")

# As many batches at once as the pipeline keeps in flight, each on the same ONNX
# Runtime threads: the tuning that @serve.batch's documentation offers a user.
CONCURRENT_BATCHES: int = Settings.model_fields["max_batches_in_flight"].default


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class PeerClassifier:
    def __init__(self, settings: Settings) -> None:
        self._model = OnnxClassifier(
            settings.model_path,
            name=settings.model_name,
            intra_op_threads=settings.ort_intra_op_threads,
            allow_spinning=settings.ort_allow_spinning,
        )
        self.classify.set_max_batch_size(settings.max_batch_size)
        self.classify.set_batch_wait_timeout_s(settings.batch_timeout)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def classify(self, images: list[bytes]) -> list[object]:
        outcomes = await asyncio.to_thread(self._model.classify, images, [5] * len(images))
        return [o if not isinstance(o, ErrorInfo) else {"error": o.message} for o in outcomes]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=512)
@serve.ingress(peer_app)
class PeerIngress:
    def __init__(self, classifier: DeploymentHandle) -> None:
        self._classifier = classifier

    @peer_app.post("/v1/classify")
    async def classify(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        image = base64.b64decode(body["image"])
        predictions = await self._classifier.classify.remote(image)
        return Response(orjson.dumps({"predictions": predictions}), media_type="application/json")


def build_peer(settings: Settings) -> Application:
    return PeerIngress.bind(PeerClassifier.bind(settings))
