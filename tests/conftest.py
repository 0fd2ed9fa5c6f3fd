"""Shared fixtures: a verifying webhook receiver and a router service built on a
temporary rules file, store and templates."""

import shutil
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from router.app import create_app
from router.settings import Settings
from tests.receiver import SECRET, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "events"


def example(name: str) -> dict[str, Any]:
    """One of the Canvas example payloads (from the Live Events docs)."""
    return orjson.loads((EXAMPLES / f"{name}.json").read_bytes())


def all_examples() -> dict[str, dict[str, Any]]:
    return {path.stem: orjson.loads(path.read_bytes()) for path in sorted(EXAMPLES.glob("*.json"))}


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = WebhookReceiver()
    runner = await hook.start()
    yield hook
    await runner.cleanup()


def webhook_rules(url: str, *, secret: str | None = SECRET, extra_channel: str = "") -> str:
    """A rules file sending every event to ``url``."""
    secret_line = f'secret: "{secret}"' if secret else ""
    return textwrap.dedent(
        f"""\
        version: 1
        channels:
          hook:
            type: webhook
            url: "{url}"
            {secret_line}
            timeout: 5
        {textwrap.indent(textwrap.dedent(extra_channel), "  ")}
        rules:
          - name: everything
            events: ["*"]
            notify: [hook]
        """
    )


ServiceFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def service(tmp_path: Path, aiohttp_client: Any) -> ServiceFactory:
    """Build and start a router service: ``await service(rules_yaml, **settings)``."""

    async def make(rules: str, **overrides: Any) -> TestClient:
        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(rules)
        templates = tmp_path / "templates"
        if not templates.exists():
            shutil.copytree(ROOT / "templates", templates)
        settings = Settings(
            rules=rules_file,
            templates=templates,
            db=str(tmp_path / "router.db"),
            backoff_base=0.05,
            backoff_cap=0.2,
            shutdown_grace=2,
            **overrides,
        )
        return await aiohttp_client(create_app(settings))

    return make
