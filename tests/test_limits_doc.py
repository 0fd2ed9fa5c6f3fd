"""docs/limits.md is kept honest: its YAML examples load, and the limits it states
are the ones the code enforces."""

import shutil
from pathlib import Path

import pytest

from router import config_source, events, redact, sandbox, templates
from router.http.auth import SESSION_SECONDS
from router.plugins import load_plugins
from router.rules import Defaults, load_rules
from router.settings import Settings
from router.store import health
from tests.conftest import ROOT
from tests.test_docs import code_blocks

DOC = (ROOT / "docs" / "limits.md").read_text()


@pytest.mark.parametrize(
    "code", [code for lang, code in code_blocks(DOC) if lang == "yaml"], ids=["limits", "redact"]
)
def test_the_yaml_examples_load(tmp_path: Path, code: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(code)
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    rules = load_rules(
        path, load_plugins().channel_types, templates=templates.Templates(tmp_path / "templates")
    )
    assert rules.defaults.limits == sandbox.DEFAULT_LIMITS or rules.defaults.redact_keys


def test_the_stated_limits_are_the_code_s() -> None:
    defaults = Defaults()
    stated = {
        "render_timeout: 2s": defaults.render_timeout == 2.0,
        "render_max_output: 1000000": defaults.render_max_output == 1_000_000,
        "never more than 100000 items": sandbox.MAX_RANGE == 100_000,
        "| file size | 4 MiB |": config_source.MAX_YAML_BYTES == 4 * 1024 * 1024,
        "| 200000 |": config_source.MAX_YAML_VALUES == 200_000,
        "| 64 levels |": config_source.MAX_YAML_DEPTH == 64,
        "`ROUTER_RELOAD_TIMEOUT` (30 s)": Settings.model_fields["reload_timeout"].default == 30,
        "`ROUTER_READ_TIMEOUT` (30 s;": Settings.model_fields["read_timeout"].default == 30,
        "| 255 characters |": events.MAX_EVENT_NAME == 255,
        "bounded (4096 entries)": templates.RESOLVED_CACHE == 4096,
        "for 30 s after the latest failed write": health.RECENT == 30,
        "with an expiry (12 h)": SESSION_SECONDS == 12 * 3600,
    }
    for text, holds in stated.items():
        assert text in DOC, text
        assert holds, text
    listed = DOC.split("is one of: ")[1].split(". Add your own")[0]
    assert sorted(name.strip(" `\n") for name in listed.split(",")) == sorted(redact.REDACT_KEYS)
