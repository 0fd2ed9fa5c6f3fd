"""GET /metrics through the real service: a scripted scenario (accept, match, deliver,
retry, dead-letter, replay) and the exact value of every metric it moves."""

import asyncio
import time
from pathlib import Path

import orjson
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from router.http.keys import DRAINING, METRICS
from router.metrics import Metrics
from tests.conftest import ServiceFactory, example, webhook_rules
from tests.receiver import WebhookReceiver

ADMIN = {"Authorization": "Bearer admin-token-for-tests"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

OBSERVER_PLUGIN = """
from router import hookimpl


@hookimpl
def delivery_finished(outcome):
    raise RuntimeError("observer bug")
"""


async def scrape(client: TestClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until_metric(
    client: TestClient, name: str, expected: float, timeout: float = 10.0, **labels: str
) -> Samples:
    """Scrape until ``name`` has the expected value and the queues are empty: queue
    gauges are read from the store while counters move as work finishes, so only a
    settled scrape gives exact differences."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(client)
        settled = (
            value(samples, "router_deliveries_pending") == 0
            and value(samples, "router_events_pending") == 0
        )
        if value(samples, name, **labels) == expected and settled:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{name}{labels} is {value(samples, name, **labels)}, not {expected}"
            )
        await asyncio.sleep(0.02)


UNSTEADY = ("_created", "_bucket", "_seconds_sum", "router_store_size_bytes")


def changed(before: Samples, after: Samples) -> dict[str, float]:
    """The samples that moved, leaving out those whose value is not exact: ``_created``
    timestamps, histogram buckets and sums, and the store's size."""
    moved = {}
    for key in before.keys() | after.keys():
        name, labels = key
        if name.endswith(UNSTEADY):
            continue
        delta = after.get(key, 0.0) - before.get(key, 0.0)
        if delta:
            label_text = ",".join(f"{k}={v}" for k, v in labels)
            moved[f"{name}{{{label_text}}}" if labels else name] = round(delta, 9)
    return moved


async def test_scripted_scenario_moves_exactly_the_expected_metrics(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "observer_boom.py").write_text(OBSERVER_PLUGIN)
    client = await service(
        webhook_rules(receiver.url),
        admin_token="admin-token-for-tests",
        plugins_dir=plugins,
        max_body_bytes=8192,
    )
    s0 = await scrape(client)
    assert value(s0, "router_events_received_total") == 0
    assert value(s0, "router_dead_letters") == 0

    # 1. accepted, matched, delivered at the first attempt
    await client.post("/events", json=example("course_created"))
    s1 = await until_metric(
        client,
        "router_deliveries_completed_total",
        1,
        channel="hook",
        result="delivered_first_attempt",
    )
    assert changed(s0, s1) == {
        "router_events_received_total": 1,
        "router_events_accepted_total": 1,
        "router_rule_matches_total{rule=everything}": 1,
        "router_delivery_attempts_total{channel=hook,outcome=delivered}": 1,
        "router_deliveries_completed_total{channel=hook,result=delivered_first_attempt}": 1,
        "router_delivery_latency_seconds_count{channel=hook}": 1,
        "router_plugin_errors_total{hook=delivery_finished,plugin=observer_boom}": 1,
    }
    latency = value(s1, "router_delivery_latency_seconds_sum", channel="hook")
    assert 0 < latency < 5
    assert value(s1, "router_delivery_latency_seconds_bucket", channel="hook", le="5.0") == 1
    assert value(s1, "router_delivery_latency_seconds_bucket", channel="hook", le="0.001") == 0

    # 2. the same event again: a duplicate, nothing else
    await client.post("/events", json=example("course_created"))
    s2 = await scrape(client)
    assert changed(s1, s2) == {
        "router_events_received_total": 1,
        "router_events_duplicate_total": 1,
    }

    # 3. retried once, then delivered
    receiver.script.append((503, {}))
    await client.post("/events", json=example("course_updated"))
    s3 = await until_metric(
        client,
        "router_deliveries_completed_total",
        1,
        channel="hook",
        result="delivered_after_retry",
    )
    moved = changed(s2, s3)
    assert moved["router_events_accepted_total"] == 1
    assert moved["router_delivery_attempts_total{channel=hook,outcome=retried}"] == 1
    assert moved["router_delivery_attempts_total{channel=hook,outcome=delivered}"] == 1
    assert "router_deliveries_completed_total{channel=hook,result=delivered_first_attempt}" not in (
        moved
    )
    assert moved["router_plugin_errors_total{hook=delivery_finished,plugin=observer_boom}"] == 2

    # 4. a permanent failure: a dead letter
    receiver.script.append((422, {}))
    await client.post("/events", json=example("course_completed"))
    s4 = await until_metric(client, "router_dead_letters", 1)
    moved = changed(s3, s4)
    assert moved["router_delivery_attempts_total{channel=hook,outcome=dead}"] == 1
    assert moved["router_deliveries_completed_total{channel=hook,result=failed}"] == 1
    assert moved["router_dead_letters"] == 1
    assert "router_delivery_latency_seconds_count{channel=hook}" not in moved

    # 5. replayed through the admin API: delivered, the queue is empty again
    resp = await client.post("/-/dlq/replay", json={"all": True}, headers=ADMIN)
    assert await resp.json() == {"replayed": 1}
    s5 = await until_metric(client, "router_dead_letters", 0)
    s5 = await until_metric(
        client, "router_delivery_attempts_total", 3, channel="hook", outcome="delivered"
    )
    moved = changed(s4, s5)
    # A replay starts the attempt count again: it shows as a first-attempt delivery.
    assert (
        moved["router_deliveries_completed_total{channel=hook,result=delivered_first_attempt}"] == 1
    )
    assert moved["router_delivery_latency_seconds_count{channel=hook}"] == 1
    assert value(s5, "router_deliveries_pending") == 0
    assert value(s5, "router_events_pending") == 0
    assert value(s5, "router_oldest_pending_delivery_age_seconds") == 0
    assert value(s5, "router_delivery_latency_seconds_count", channel="hook") == 3
    assert (
        value(s5, "router_plugin_errors_total", plugin="observer_boom", hook="delivery_finished")
        == 5
    )

    # 6. refused requests, by reason; nothing is stored or routed
    await client.post("/events", data=b"{not json", headers={"Content-Type": "application/json"})
    await client.post("/events", json={"metadata": {}})
    await client.post("/events", data=b"a,b", headers={"Content-Type": "text/csv"})
    await client.post(
        "/events", data=b"[" + b" " * 9000 + b"]", headers={"Content-Type": "application/json"}
    )
    s6 = await scrape(client)
    assert changed(s5, s6) == {
        "router_events_received_total": 4,
        "router_events_rejected_total{reason=bad_json}": 1,
        "router_events_rejected_total{reason=invalid}": 1,
        "router_events_rejected_total{reason=unsupported_type}": 1,
        "router_events_rejected_total{reason=too_large}": 1,
    }

    # 7. rules reloads by outcome
    assert (await client.post("/-/reload", headers=ADMIN)).status == 200
    s7 = await scrape(client)
    assert value(s7, "router_rules_reloads_total", outcome="ok") == 1
    assert value(s7, "router_rules_reloads_total", outcome="rejected") == 0
    assert value(s7, "router_store_size_bytes") > 0


async def test_unauthorized_and_draining_refusals_are_counted(service: ServiceFactory) -> None:
    client = await service(webhook_rules("", secret=None), ingest_token="ingest-secret")
    await client.post("/events", json=example("course_created"))
    samples = await scrape(client)
    assert value(samples, "router_events_rejected_total", reason="unauthorized") == 1
    assert client.app[METRICS].rejected[401]._value.get() == 1  # the bound child counted
    client.app[DRAINING].set()
    resp = await client.post(
        "/events", json=example("course_created"), headers={"Authorization": "Bearer ingest-secret"}
    )
    assert resp.status == 503
    samples = await scrape(client)
    assert value(samples, "router_events_rejected_total", reason="draining") == 1
    assert value(samples, "router_events_accepted_total") == 0


NOISY_RULES = """\
version: 1
channels:
  quiet: {type: webhook}
rules:
  - name: once-an-hour
    events: [course_created]
    notify: [quiet]
    throttle: {per: 1h}
  - name: grouped
    events: [course_updated]
    notify: [quiet]
    digest: {group_by: [body.id], wait: 0.3s, max: 10}
  - name: broken-template
    events: [course_completed]
    notify: [quiet]
    template: broken
"""


async def test_throttles_digests_and_render_errors_are_counted(
    service: ServiceFactory, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "default.j2").write_text("{{ event_name }}\n")
    (templates / "digest.j2").write_text("{{ count }} events\n")
    (templates / "broken.j2").write_text("{{ body.no_such_field.deeper }}\n")
    client = await service(NOISY_RULES)
    for _ in range(3):
        await client.post("/events", json=example("course_created") | {"extra": time.time()})
    await client.post(
        "/events", json=[example("course_updated"), example("course_updated") | {"x": 1}]
    )
    await client.post("/events", json=example("course_completed"))
    samples = await until_metric(client, "router_digests_sent_total", 1, rule="grouped")
    assert value(samples, "router_rule_matches_total", rule="once-an-hour") == 3
    assert value(samples, "router_throttled_total", rule="once-an-hour") == 2
    assert value(samples, "router_digested_events_total", rule="grouped") == 2
    assert value(samples, "router_render_errors_total", rule="broken-template") == 1
    assert value(samples, "router_dead_letters") == 1
    samples = await until_metric(
        client, "router_delivery_attempts_total", 2, channel="quiet", outcome="logged"
    )
    assert (
        value(samples, "router_deliveries_completed_total", channel="quiet", result="logged") == 2
    )


async def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.accepted.inc(3)
    assert first.registry is not second.registry
    assert second.registry.get_sample_value("router_events_accepted_total") == 0
    assert first.registry.get_sample_value("router_events_accepted_total") == 3
    text = orjson.dumps(first.exposition().decode())
    assert b"router_events_accepted_total 3.0" in text
