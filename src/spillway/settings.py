"""Settings, read once from ``SPILLWAY_*`` environment variables at the edge and passed down."""

from __future__ import annotations

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
    heartbeat_interval: float = Field(default=5.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    # Task policy defaults (each task may override them).
    max_retries: int = Field(default=3, ge=0)
    retry_base: float = Field(default=1.0, ge=0)
    retry_cap: float = Field(default=60.0, ge=0)
    task_timeout: float = Field(default=300.0, gt=0)
    concurrency: int = Field(default=100, ge=1)
    # Accept-side limits.
    max_payload_bytes: int = Field(default=1_048_576, ge=64)
    max_json_depth: int = Field(default=32, ge=1, le=256)
    check_eviction_policy: bool = True
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
    def _wait_fits_in_the_redis_timeout(self) -> Settings:
        # The WAIT reply is read like any other; it must come well before the socket timeout.
        if self.wait_replicas and self.wait_timeout >= self.redis_timeout * 0.8:
            raise ValueError("wait_timeout must be shorter than 80 % of redis_timeout")
        return self

    # HTTP API.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys (comma-separated in the environment); empty: no authentication.",
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
            "Seconds the rest of a request body over 64 KiB may take to arrive, and the longest"
            " a body of any size may pause; then 408."
        ),
    )
    head_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a request's line and headers may take to arrive; then 408.",
    )

    @field_validator("api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value
