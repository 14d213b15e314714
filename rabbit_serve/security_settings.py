"""The security and webhook part of :class:`~rabbit_serve.settings.Settings`: who may
call, with what limits, and where results may be sent.

A base class of the one settings object, not a second one: every process still reads
one ``Settings`` (this module only keeps the file to a size a reader takes in).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SecuritySettings(BaseSettings):
    """API keys and limits, broker users, webhook policy. Field ``foo_bar`` reads env
    ``FOO_BAR``, as in :class:`~rabbit_serve.settings.Settings`."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, protected_namespaces=()
    )

    # Security.
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated keys; when set, /v1/* needs 'Authorization: Bearer <key>' "
        "or 'X-API-Key'.",
        repr=False,
    )
    api_keys_file: str = Field(
        "",
        description="A file of API keys, one per line, re-read when it changes: keys are "
        "rotated without restarting anything. Used with API_KEYS (either may be empty).",
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve /v1 without API keys although the HTTP proxy listens on a "
        "non-loopback address (off: such a deploy refuses to start).",
    )
    key_rate_limit: float = Field(
        50.0,
        ge=0,
        description="Images per second one API key may submit to one ingress replica "
        "(token bucket, burst KEY_RATE_BURST); beyond it 429 with Retry-After; 0: no limit.",
    )
    key_rate_burst: int = Field(
        100,
        ge=1,
        description="Images one API key may submit at once before KEY_RATE_LIMIT applies.",
    )
    key_max_concurrent: int = Field(
        64,
        ge=0,
        description="Requests one API key may have open at one ingress replica; beyond it "
        "429 with Retry-After; 0: no limit.",
    )
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Request body bytes one ingress replica holds at once (being read, "
        "published or waiting for results); beyond it new requests get 503 at once.",
    )

    # Webhooks.
    webhook_secret: str = Field(
        "",
        description="When set, each webhook POST carries an HMAC-SHA256 signature header.",
        repr=False,
    )
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated hosts ('*.example.com' allowed) webhooks may target; "
        "empty: any public host.",
    )
    webhook_allow_private: bool = Field(
        False, description="Allow webhooks to loopback, private and link-local addresses."
    )
    webhook_allowed_ports: Annotated[tuple[int, ...], NoDecode] = Field(
        (80, 443),
        description="Comma-separated ports webhooks may target; '*': any port.",
    )
    webhook_trust_env: bool = Field(
        False,
        description="Let the webhook client honour HTTP(S)_PROXY and NO_PROXY from the "
        "environment (off: it connects to the checked address directly).",
    )
    webhook_queue: str = Field(
        "rabbit-serve.webhooks",
        description="Durable outbox of results bound for webhooks, delivered apart from batching.",
    )
    webhook_concurrency: int = Field(
        16, ge=1, le=1024, description="Webhook deliveries one consumer runs at once."
    )
    webhook_timeout: float = Field(5.0, gt=0, description="Seconds per webhook POST attempt.")
    webhook_max_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="POST attempts per webhook before its result goes to the webhook "
        "dead-letter queue.",
    )
    webhook_job_ttl: float = Field(
        6 * 3600.0,
        gt=0,
        description="Seconds an accepted webhook job may wait for a consumer (not TIMEOUT); "
        "past it, the webhook receives an error instead of a result.",
    )
    webhook_dead_letter_queue: str = Field(
        "rabbit-serve.webhooks.dead",
        description="Webhook results whose receiver never accepted them; list and replay "
        "with `python -m rabbit_serve.webhook_dlq`.",
    )
    webhook_dedup_window: float = Field(
        3600.0,
        gt=0,
        description="Seconds the ledger remembers a delivered webhook, so a redelivered "
        "result is not POSTed again by any consumer.",
    )
    idempotency_window: float = Field(
        24 * 3600.0,
        gt=0,
        description="Seconds an Idempotency-Key is remembered: a retry with it gets the "
        "first answer, and nothing is queued twice.",
    )

    @field_validator("api_keys", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_allowed_ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip() == "*":
                return ()
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_allowed_ports")
    @classmethod
    def _valid_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= port <= 65535 for port in value):
            raise ValueError("ports are 1..65535")
        return value
