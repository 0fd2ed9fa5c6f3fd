"""A coverage-guided fuzzer (atheris) over what strangers and careless hands feed the
router: request bodies (event parsing), rules files (the YAML loader and validation)
and templates (compilation and a bounded render).

The first byte of an input picks the target, the rest is its data; the seed corpus is
``tests/fuzz/corpus``. A crash is any exception the target's contract does not allow,
an input that runs past libFuzzer's ``-timeout`` or grows past ``-rss_limit_mb``.

    .venv/bin/python tests/fuzz/fuzz_router.py CORPUS_COPY -max_total_time=60

(Give it a copy of the corpus: libFuzzer adds the inputs it finds to that directory.)
``tests/test_fuzz.py`` runs it for a few seconds.
"""

import sys
import tempfile
import time
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["router"]):
    import jinja2

    from router.config_source import ConfigErrors
    from router.events import BadRequest, InvalidEvents, TooManyItems, parse_body
    from router.plugins import load_plugins
    from router.rules import load_rules
    from router.sandbox import LimitExceeded, RenderLimits, bounded
    from router.templates import Templates

CHANNEL_TYPES = load_plugins().channel_types
WORK = Path(tempfile.mkdtemp(prefix="router-fuzz-"))
RULES = WORK / "rules.yaml"
LIMITS = RenderLimits(timeout=0.5, max_output=100_000)
ENV = Templates(WORK).env
CONTEXT = {
    "event": {"metadata": {"event_name": "x"}, "body": {"n": 10**9, "s": "a" * 100}},
    "metadata": {"event_name": "x", "time_zone": "America/New_York"},
    "body": {"n": 10**9, "s": "a" * 100, "items": list(range(50)), "html": "<p>x</p>"},
    "previous": None,
}


def events(data: bytes) -> None:
    """Any body: parsed, or refused with one of the three answers ingest gives."""
    for ndjson in (False, True):
        try:
            parse_body(data, ndjson=ndjson, max_items=100)
        except (BadRequest, InvalidEvents, TooManyItems):
            pass


def rules(data: bytes) -> None:
    """Any rules file: loaded, or ConfigErrors (with file:line) — nothing else."""
    RULES.write_bytes(data)
    try:
        load_rules(RULES, CHANNEL_TYPES)
    except ConfigErrors:
        pass
    except UnicodeDecodeError:
        pass  # load_rules reads UTF-8 only; the CLI reports it


def template(data: bytes) -> None:
    """Any template: compiled or a TemplateSyntaxError; rendered within its limits.
    A render may fail (that delivery is dead-lettered) but not run on or grow."""
    source = data.decode("utf-8", "replace")
    try:
        compiled = ENV.from_string(source)
    except jinja2.TemplateError:
        return
    except RecursionError:
        return  # a deeply nested expression: refused, as for a real template file
    started = time.monotonic()
    try:
        with bounded(LIMITS):
            compiled.render(CONTEXT)
    except MemoryError:
        raise
    except (LimitExceeded, jinja2.TemplateError, Exception):
        pass
    took = time.monotonic() - started
    if took > LIMITS.timeout * 4:
        raise AssertionError(f"a render ran {took:.2f}s past render_timeout")


TARGETS = [events, rules, template]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
