"""The one settings object, read from the environment by every process.

Every Ray process (ingress replicas, consumer actors, classifier replicas) builds
its own :class:`Settings`, but the application builder also passes the driver's
object to each deployment, so a cluster whose nodes have different environments
still runs with one configuration.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from rabbit_serve.security_settings import SecuritySettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_PATH = REPO_ROOT / "models" / "efficientnet_lite0.onnx"


class Settings(SecuritySettings):
    """Configuration shared by all processes. Field ``foo_bar`` reads env ``FOO_BAR``."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, protected_namespaces=()
    )

    # Broker.
    amqp_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        description="RabbitMQ URL; amqps:// for TLS.",
        repr=False,  # holds the broker password
    )
    request_queue: str = Field(
        "rabbit-serve.requests", description="Durable queue the ingress publishes to."
    )
    reply_queue_prefix: str = Field(
        "rabbit-serve.replies",
        description="Prefix of each ingress replica's own reply queue.",
    )
    dead_letter_queue: str = Field(
        "rabbit-serve.requests.dead",
        description="Where messages go that expired or kept failing; consumers answer them.",
    )
    max_queue_length: int = Field(
        10_000, ge=1, description="Messages the request queue holds; when full, requests get 503."
    )
    delivery_limit: int = Field(
        3,
        ge=1,
        description="Returns to the queue (failures, crashed consumers) before a message is "
        "dead-lettered and its client gets an error.",
    )
    broker_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for a broker connection before giving up."
    )
    publish_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for a publisher confirm before answering 503."
    )
    amqp_heartbeat: int = Field(
        5,
        ge=1,
        le=600,
        description="AMQP heartbeat timeout, seconds: the broker drops a silent client after "
        "about this long, a client gives up on a silent broker after (this + 1) x 3.",
    )
    max_queue_bytes: int = Field(
        1024**3,
        ge=1,
        description="Bytes of images the request queue holds; when full, requests get 503.",
    )
    ingress_amqp_url: str = Field(
        "",
        description="RabbitMQ URL of the ingress replicas (a user that may only publish "
        "requests and read its own reply queue); empty: AMQP_URL.",
        repr=False,
    )
    consumer_amqp_url: str = Field(
        "",
        description="RabbitMQ URL of the consumers (a user limited to the request, "
        "dead-letter and webhook queues); empty: AMQP_URL.",
        repr=False,
    )

    # Batching.
    max_batch_size: int = Field(
        16, ge=1, le=1024, description="A batch is dispatched as soon as it holds this many images."
    )
    batch_timeout: float = Field(
        0.01,
        ge=0,
        description="Seconds after a batch's first image at which it is dispatched, full or not.",
    )
    dispatch_when_idle: bool = Field(
        True,
        description="While no batch is at the classifier, send what waits at once instead of "
        "waiting BATCH_TIMEOUT.",
    )
    max_batches_in_flight: int = Field(
        2, ge=1, le=64, description="Batches a consumer keeps at the classifier at once."
    )
    max_batch_pixels: int = Field(
        120_000_000,
        ge=1,
        description="Decoded pixels one batch may carry (width x height summed): a burst of "
        "huge images is split over several batches instead of exhausting a replica's memory.",
    )
    classify_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds one classifier call may take before the consumer abandons it "
        "and tries again (a hung replica, a stopped process, a partitioned node).",
    )
    stall_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a consumer with work in hand may go without finishing a batch "
        "before its health check fails and Serve replaces it.",
    )
    classifier_max_memory_mb: int = Field(
        0,
        ge=0,
        description="Resident memory (MiB) past which a classifier replica exits so Serve "
        "replaces it (a leak, or an image that blows up in decoding); 0: no limit.",
    )
    queue_sample_interval_s: float = Field(
        2.0,
        gt=0,
        description="Seconds between a consumer's samples of the request queue's ready "
        "count (a passive declare): the queue-depth metrics and the autoscaling signal.",
    )
    num_consumers: int = Field(
        1,
        ge=0,
        description="Consumer actors; 0 deploys none (consumers run in another application).",
    )

    # Requests.
    timeout: float = Field(
        10.0, gt=0, description="Seconds a request may wait for its answer before a 504."
    )
    default_top_k: int = Field(5, ge=1, description="Predictions returned when top_k is omitted.")
    max_top_k: int = Field(100, ge=1, description="Largest top_k a client may ask for.")
    max_image_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest encoded image accepted, in bytes."
    )
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest width x height accepted (decompression bombs)."
    )
    max_images_per_request: int = Field(32, ge=1, description="Images one request may carry.")
    max_request_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Largest HTTP request body accepted, in bytes."
    )

    # Model.
    model_path: Path = Field(
        DEFAULT_MODEL_PATH,
        description="ONNX classifier; its spec beside it (same name, .json) says what input "
        "it takes and names its classes.",
    )
    model_name: str = Field("efficientnet-lite0", description="Name reported to clients.")
    ort_intra_op_threads: int = Field(
        1,
        ge=0,
        description="ONNX Runtime threads per batch; 0 lets ONNX Runtime use every core. "
        "Batches run side by side (MAX_BATCHES_IN_FLIGHT), so 1 keeps the cores busy "
        "without threads waiting on each other.",
    )
    ort_lone_batch_threads: int = Field(
        2,
        ge=0,
        description="On CPU, ONNX Runtime threads for a lone batch (the consumer has nothing "
        "else in flight or waiting, and no other batch is running): a second session, so a "
        "lone request is not held to one core; 0 or <= ORT_INTRA_OP_THREADS turns it off.",
    )
    preprocess_threads: int = Field(
        0,
        ge=0,
        description="Threads per classifier replica that decode and resize images; 0 means "
        "min(4, cores). On a GPU node they, not the GPU, set the ceiling (about 650 "
        "images/s each): give them the node's cores.",
    )
    ort_allow_spinning: bool = Field(
        False,
        description="Let ONNX Runtime threads spin-wait; costs CPU when cores are shared.",
    )
    fast_jpeg_decode: bool = Field(
        False,
        description="Decode large JPEGs at a reduced scale (down to twice the resize's short "
        "side): 2-4x less CPU on a 12 MP photo, but scores move up to about 0.06 from the "
        "model's own preprocessing. Off: every pixel is decoded.",
    )

    @field_validator(
        "reply_queue_prefix",
        "request_queue",
        "dead_letter_queue",
        "webhook_queue",
        "webhook_dead_letter_queue",
    )
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_top_k > self.max_top_k:
            raise ValueError("DEFAULT_TOP_K must not exceed MAX_TOP_K")
        return self

    @property
    def ingress_broker_url(self) -> str:
        return self.ingress_amqp_url or self.amqp_url

    @property
    def consumer_broker_url(self) -> str:
        return self.consumer_amqp_url or self.amqp_url

    @property
    def prefetch_count(self) -> int:
        """Unacked messages a consumer may hold: the batches in flight plus one filling."""
        return self.max_batch_size * (self.max_batches_in_flight + 1)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None = None) -> Settings:
        """Environment first, then ``overrides`` (e.g. Serve app args), keys in any case."""
        return cls(**{key.lower(): value for key, value in (overrides or {}).items()})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment."""
    return Settings()
