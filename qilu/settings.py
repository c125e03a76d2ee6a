"""One place for every setting of a Qilu process, read from `QILU_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QILU_", env_file=None, extra="ignore")

    # Unset means: use the embedded FerretDB that `qilu services up` installs and starts.
    mongodb_url: str | None = None
    mongodb_db: str = "qilu"
    mongodb_timeout_ms: int = 5000
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = None
    # On stop, requests still open after this long (live feeds never finish) are cut; the browsers reconnect to
    # whichever process serves next and take their feed up where it left off.
    shutdown_grace_s: float = Field(default=10.0, ge=0)

    # Embedded engines (only used when the URLs above do not point elsewhere).
    ferretdb_port: int = 27018
    ferretdb_version: str = "v1.24.2"

    # Signing keys for tokens and e-health cards; generated under data_dir when unset.
    signing_key_path: Path | None = None
    card_key_path: Path | None = None

    # Access tokens are short-lived; refresh tokens rotate on every use.
    token_issuer: str = "qilu"
    token_audience: str = "qilu-api"
    access_token_ttl_s: int = Field(default=900, ge=30)
    refresh_token_ttl_s: int = Field(default=12 * 3600, ge=60)
    # An external OpenID Connect issuer (the province's identity service) whose tokens are accepted too.
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str = "qilu-api"

    # Referrals: minutes to accept by urgency, escalations before failing, sharing after completion.
    accept_minutes_stat: float = 15
    accept_minutes_asap: float = 60
    accept_minutes_urgent: float = 240
    accept_minutes_routine: float = 48 * 60
    max_escalations: int = 2
    share_days_after_completion: int = 30
    deadline_sweep_s: float = 30.0
    outbox_sweep_s: float = 5.0
    stats_refresh_s: float = 600.0
    # E-mail notifications over SMTP; none are sent when no host is set.
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "qilu@localhost"
    # Text messages to hospitals' on-call numbers (Organization.telecom, system "sms") for the most urgent
    # referrals, through the SMS provider's HTTP API; none are sent when no URL is set.
    sms_url: str | None = None
    sms_token: str | None = None
    sms_priorities: list[str] = ["stat", "asap"]

    # Consult rooms: STUN/TURN servers handed to clients and used by the media hub (none: host candidates
    # only), e.g. [{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}].
    consult_ice_servers: list[dict] = Field(default_factory=list)
    consult_recording_dir: str = "consult-recordings"  # under data_dir
    # Bulk exports (FHIR $export): NDJSON files under data_dir, deleted this long after they are made.
    export_dir: str = "exports"
    export_keep_hours: float = Field(default=24, gt=0)
    export_sweep_s: float = 600.0
    # How often the worker finishes writing patients' reach, ends shares whose time is up and lifts revocations.
    reach_sweep_s: float = 10.0
    consult_recording_width: int = Field(default=640, ge=64, le=1920)
    consult_recording_height: int = Field(default=360, ge=64, le=1080)
    consult_recording_fps: int = Field(default=15, ge=1, le=30)
    consult_grace_s: float = Field(default=120.0, ge=0)  # an empty live room ends after this
    consult_opens_before_s: float = Field(default=1800.0, ge=0)  # joinable this long before its scheduled time
    consult_join_timeout_s: float = Field(default=15.0, gt=0)
    consult_message_max_bytes: int = Field(default=256 * 1024, ge=1024)
    consult_messages_per_s: float = Field(default=20.0, gt=0)
    consult_message_burst: int = Field(default=40, ge=1)

    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    # Refused accesses one caller may have in a minute before being held back with 429 (probing).
    denial_burst: int = Field(default=60, ge=1)

    @property
    def embedded_mongodb(self) -> bool:
        return self.mongodb_url is None

    @property
    def effective_mongodb_url(self) -> str:
        return self.mongodb_url or f"mongodb://127.0.0.1:{self.ferretdb_port}/"

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def fhir_base_url(self) -> str:
        """Where the FHIR API answers: the base of every reference and link the record writes."""
        return self.base_url + "/fhir"

    def path(self, *parts: str) -> Path:
        """A path under the data directory, made absolute so child processes agree on it."""
        return self.data_dir.resolve().joinpath(*parts)


@lru_cache
def get_settings() -> Settings:
    return Settings()
