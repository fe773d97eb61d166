"""Settings, read once from ``SPILLWAY_*`` environment variables at the edge and passed down."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob has a default that works for `spillway dev`; production sets `redis_url`."""

    model_config = SettingsConfigDict(env_prefix="SPILLWAY_", frozen=True, extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis address. Unset: `spillway dev` and tests start an embedded server.",
    )
    prefix: str = Field(default="spillway", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    shards: int = Field(default=1, ge=1, le=1024, description="Shard streams per queue.")
    backlog_limit: int = Field(
        default=100_000, ge=1, description="Tasks a queue may hold (queued + delayed + running)."
    )
    result_ttl: float = Field(default=86_400, gt=0, description="Seconds a terminal record lives.")
    idempotency_ttl: float = Field(default=86_400, gt=0)
    redis_timeout: float = Field(
        default=0.5, gt=0, description="Seconds before a Redis command counts as failed."
    )
    # Delivery and recovery.
    visibility_timeout: float = Field(
        default=30.0, gt=0, description="Idle seconds before another worker reclaims a delivery."
    )
    block_ms: int = Field(default=1000, ge=1, le=60_000, description="XREADGROUP block time.")
    batch_size: int = Field(default=100, ge=1, le=10_000)
    read_linger: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description=(
            "Seconds a worker's reader lets pass between reads while they bring more than one"
            " task but less than a batch, so work arriving under load is read, begun and"
            " stored in batches (docs/architecture.md#batching-under-load). 0: read at once."
        ),
    )
    heartbeat_interval: float = Field(default=5.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    # Task policy defaults (each task may override them).
    max_retries: int = Field(default=3, ge=0)
    retry_base: float = Field(default=1.0, ge=0)
    retry_cap: float = Field(default=60.0, ge=0)
    task_timeout: float = Field(default=300.0, gt=0)
    concurrency: int = Field(default=100, ge=1)
    # Accept-side limits.
    accept_linger: float = Field(
        default=0.002,
        ge=0,
        le=1,
        description=(
            "Seconds a process lets pass between its writes of single tasks while each write"
            " carries more than one: the tasks arriving meanwhile go in the next"
            " (docs/architecture.md#batching-under-load). At most half of redis_timeout."
        ),
    )
    max_payload_bytes: int = Field(default=1_048_576, ge=64)
    max_json_depth: int = Field(default=32, ge=1, le=256)
    max_json_containers: int = Field(
        default=100_000,
        ge=1,
        description=(
            "Arrays and objects one task's JSON may hold (counted as its `[` and `{`); then"
            " 422. Bounds how long parsing one task holds the event loop."
        ),
    )
    # Callers sharing a queue (docs/architecture.md#callers).
    fair_callers: bool = Field(
        default=False,
        description=(
            "Workers start the waiting tasks of a lane's callers in turn (round-robin), so one"
            " caller's flood does not delay another's task."
        ),
    )
    caller_quota: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description=(
            "Fraction of BACKLOG_LIMIT one caller's waiting tasks may hold in a lane; over it,"
            " 429 for that caller only. 1: no quota."
        ),
    )
    tenant_header: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description=(
            "Header naming the caller (set by a trusted gateway); unset: the API key is the"
            " caller. Read only with FAIR_CALLERS or a CALLER_QUOTA."
        ),
    )
    # Pacing refused clients (docs/architecture.md#retry-after).
    retry_after_min: float = Field(
        default=1.0, ge=1, le=3600, description="Shortest Retry-After a 429 advises (seconds)."
    )
    retry_after_max: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="Longest Retry-After a 429 (or a 202 above SLOW_DOWN_AT) advises (seconds).",
    )
    retry_after_jitter: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Each Retry-After is drawn from its value times 1 +- this, within the bounds.",
    )
    slow_down_at: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description=(
            "Fraction of the backlog limit above which 202s carry an advisory Retry-After, and"
            " which a refused client's Retry-After lets the backlog drain back to."
        ),
    )
    drain_sample_interval: float = Field(
        default=1.0, gt=0, le=60, description="Seconds between the API's drain-rate samples."
    )
    drain_halflife: float = Field(
        default=5.0, gt=0, description="Half-life (seconds) of the drain rate's moving average."
    )

    @property
    def tracks_callers(self) -> bool:
        """Whether tasks are held per caller (fairness or a quota is on)."""
        return self.fair_callers or self.caller_quota < 1

    @model_validator(mode="after")
    def _retry_after_bounds_in_order(self) -> Settings:
        if self.retry_after_min > self.retry_after_max:
            raise ValueError("retry_after_min must not be larger than retry_after_max")
        return self

    check_eviction_policy: bool = True
    tracing: bool = Field(
        default=True,
        description=(
            "Emit OpenTelemetry spans (send, process, wait) when the otel extra is installed and"
            " a tracer provider is configured; false: never, even then (docs/tracing.md)."
        ),
    )
    fast_path: bool = Field(
        default=True,
        description=(
            "Use the fast paths built on other libraries' internals (uvicorn's protocol,"
            " redis-py's connections, prometheus-client's values) when their start-up probe"
            " passes; false: always the libraries' public APIs."
        ),
    )
    # Replication (see docs/scaling.md): after an accept, WAIT for this many replicas to have
    # the task before answering 202. It narrows, but cannot close, the window of accepted
    # tasks a failover can lose; 0 answers as soon as the primary has written it.
    wait_replicas: int = Field(default=0, ge=0)
    wait_timeout: float = Field(default=0.1, gt=0)

    @model_validator(mode="after")
    def _linger_fits_in_the_accept_budget(self) -> Settings:
        # A caller waits at most twice redis_timeout for its 202, the linger included.
        if self.accept_linger > self.redis_timeout / 2:
            raise ValueError("accept_linger must not be longer than half of redis_timeout")
        return self

    @model_validator(mode="after")
    def _wait_fits_in_the_redis_timeout(self) -> Settings:
        # The WAIT reply is read like any other; it must come well before the socket timeout.
        if self.wait_replicas and self.wait_timeout >= self.redis_timeout * 0.8:
            raise ValueError("wait_timeout must be shorter than 80 % of redis_timeout")
        return self

    # Completion webhooks (spillway.webhooks, spillway.deliverer).
    callback_secret: SecretStr | None = Field(
        default=None,
        description=(
            "Key that signs each completion webhook (Spillway-Signature: HMAC-SHA256 over the"
            " timestamp and body). Unset: deliveries go unsigned (a warning at the first)."
        ),
    )
    callback_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Networks (comma-separated CIDRs, e.g. 10.1.0.0/16) a callback URL may reach"
            " although they are private, loopback or link-local (refused otherwise)."
        ),
    )
    callback_timeout: float = Field(
        default=10.0, gt=0, le=60, description="Seconds one webhook delivery may take."
    )
    callback_retry_for: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "Seconds a failing webhook is retried (with backoff and jitter) after the task"
            " ended; then it is recorded as failed."
        ),
    )

    # HTTP API.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Client API keys (comma-separated): each submits tasks and reads, waits for and"
            " cancels its own. No keys at all (this nor `admin_keys`): no authentication."
        ),
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Admin API keys (comma-separated): also every task, the dead letters, stats,"
            " metrics and the dashboard."
        ),
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Host names the API answers (comma-separated; `.example.com` includes its"
            " subdomains); empty or `*`: any. Stops DNS rebinding."
        ),
    )
    default_task_type: str | None = Field(
        default=None, description="Task type whose payload `POST /process` takes as its body."
    )
    max_batch: int = Field(default=1000, ge=1, le=10_000, description="Tasks per batch request.")
    max_batch_bytes: int = Field(default=16_777_216, ge=1024)
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds a request body of any size may take to arrive after its head (time the"
            " server holds it back, not reading yet, does not count); then 408 and the"
            " connection is closed."
        ),
    )
    head_timeout: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds a request's line and headers may take to arrive (on the fast protocol);"
            " then 408."
        ),
    )

    @field_validator(
        "api_keys", "admin_keys", "allowed_hosts", "callback_allow_networks", mode="before"
    )
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("callback_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names a bad one
        return value

    @property
    def callback_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """`callback_allow_networks`, parsed."""
        return [ipaddress.ip_network(n, strict=False) for n in self.callback_allow_networks]
