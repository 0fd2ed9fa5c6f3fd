"""Service settings: CLI options and ``ROUTER_*`` environment variables (pydantic-settings).

Kept apart from the rules file: these say how the process runs, the rules say who
hears about what.
"""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


def _duration(value: Any) -> float:
    """``7d``, ``12h``, ``90m`` or seconds (the rules file's duration syntax)."""
    from router.rules import parse_duration  # the rules module is heavy; settings are not

    return parse_duration(value)


class Settings(BaseSettings):
    """Every option of ``router serve``; each is also ``ROUTER_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore")

    rules: Path = Field(Path("rules.yaml"), description="rules file")
    templates: Path = Field(
        Path("templates"),
        description="templates directory (default: ./templates if it exists, else the"
        " templates shipped with the router)",
    )
    db: str = Field(
        "router.db",
        description="store: a SQLite file path, or postgresql://user@host/db?schema=NAME"
        " shared by several replicas",
    )
    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8080, ge=0, le=65535, description="listen port")
    plugins_dir: Path | None = Field(None, description="directory of drop-in plugin .py files")
    plugins_block: list[str] = Field(default_factory=list, description="entry points not to load")
    ingest_token: SecretStr | None = Field(None, description="bearer token for POST /events")
    jwks_url: str | None = Field(None, description="JWKS URL for Canvas signed (JWT) deliveries")
    jwt_audience: str | None = Field(None, description="required JWT audience")
    jwt_issuer: str | None = Field(None, description="required JWT issuer")
    require_signed: bool = Field(False, description="accept only JWT-signed deliveries")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest request body")
    read_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a client has to send a request's headers, and then its body;"
        " also how long an idle connection stays open",
    )
    max_batch_items: int = Field(1000, ge=1, description="most events in one request")
    dedupe_window: float = Field(86400.0, ge=0, description="seconds a repeated event is dropped")
    max_attempts: int = Field(10, ge=1, description="delivery attempts before dead-lettering")
    max_age: float = Field(86400.0, gt=0, description="seconds before a delivery is given up")
    backoff_base: float = Field(1.0, gt=0, description="first retry delay in seconds")
    backoff_cap: float = Field(600.0, gt=0, description="longest retry delay in seconds")
    background_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="share of the CPU routing and delivery get while ingest is saturated"
        " (1: no pacing)",
    )
    shutdown_grace: float = Field(10.0, ge=0, description="seconds to finish deliveries on stop")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite fsync policy (FULL survives power loss)"
    )
    public_url: str | None = Field(
        None,
        description="the URL people reach the router at (https:// makes the status page's"
        " cookie Secure behind a TLS-terminating proxy)",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token for the admin API under /-/ (off when unset)"
    )
    reload_poll: float = Field(
        2.0, ge=0, description="seconds between checks for changed rules/templates (0: off)"
    )
    reload_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a reload may spend reading and validating the files before it"
        " is abandoned (the running rules stay)",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["auto", "json", "text"] = Field("auto", description="log line format")
    retention: Annotated[float, BeforeValidator(_duration)] = Field(
        7 * 86400.0, description="keep delivered deliveries and routed events this long (7d)"
    )
    retention_interval: float = Field(
        300.0, ge=0, description="seconds between retention passes (0: off)"
    )

    @model_validator(mode="after")
    def _shipped_templates(self) -> "Settings":
        """Without ``--templates`` and without ``./templates``, use the shipped ones."""
        if "templates" not in self.model_fields_set and not self.templates.is_dir():
            from router.templates import builtin_templates  # jinja2 is heavy; settings are not

            self.templates = builtin_templates()
        return self
