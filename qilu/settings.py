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

    # Embedded engines (only used when the URLs above do not point elsewhere).
    ferretdb_port: int = 27018
    ferretdb_version: str = "v1.24.2"

    # Signing keys for tokens and e-health cards; generated under data_dir when unset.
    signing_key_path: Path | None = None
    card_key_path: Path | None = None

    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)

    @property
    def embedded_mongodb(self) -> bool:
        return self.mongodb_url is None

    @property
    def effective_mongodb_url(self) -> str:
        return self.mongodb_url or f"mongodb://127.0.0.1:{self.ferretdb_port}/"

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    def path(self, *parts: str) -> Path:
        """A path under the data directory, made absolute so child processes agree on it."""
        return self.data_dir.resolve().joinpath(*parts)


@lru_cache
def get_settings() -> Settings:
    return Settings()
