"""Ingest benchmark: the router's ``POST /events`` against a bare aiohttp server.

One run measures, with the same load generator and the same settings:

* ``bare-aiohttp``: ``bench/bare_server.py``, reads the body and answers 202;
* ``durable-floor``: ``bench/floor_server.py``, the least a durable ingest can do on
  this stack (parse, canonical JSON, hash, two SQLite inserts, group commit with
  ``synchronous=FULL``): not a target, a lower bound that tells the router's own
  overhead from the cost of durability;
* ``router``: ``router serve`` with durability on (SQLite WAL, ``synchronous=FULL``),
  a fresh database and a rule that routes the posted event to a log-only webhook.

Each request posts ``examples/events/course_completed.json`` with a distinct
``metadata.request_id``, so no event is deduplicated. Servers run pinned to one core,
the load generator to the other.

Machine speed drifts over tens of seconds, so the servers are measured interleaved,
not one after the other: all are started at once, each is warmed up once, then
``rounds`` rounds load each for ``slice`` seconds (2 s slices, an even number of rounds
filling the duration; ``--quick``: 2 rounds of 1 s), the order alternating (bare,
floor, router, then router, floor, bare, ...) so a linear drift cancels. The servers not
under load are frozen with SIGSTOP (each its whole process group) and resumed with
SIGCONT for their own slices, so the router's background routing of its backlog never
runs during another server's slice. Per server: requests/s = all answers / all measured
seconds; p50 and p99 = the median of the per-slice p50 and p99. The per-round ratios
are reported next to the headline ratio (total router req/s / total bare req/s), and
the floor's ratio to bare and the router's to the floor after it.

After the run, the number of events in the router's SQLite ``events`` table is checked
against the number of 202 answers it gave (warm-up and every slice).

    .venv/bin/python -m bench.ingest                 # 12 s per server (6 rounds of 2 s)
    .venv/bin/python -m bench.ingest --quick         # 2 rounds of 1 s, CI smoke
    .venv/bin/python -m bench.ingest --json out.json

Exits non-zero only when something broke (a server did not start, the load generator
failed, errors or non-202 answers, the durability check failed), never because the
throughput target was missed.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.loadgen import DEFAULT_FIELD, body_parts

ROOT = Path(__file__).resolve().parent.parent
EVENT_FILE = ROOT / "examples" / "events" / "course_completed.json"
TEMPLATES = ROOT / "templates"
TARGET_RATIO = 0.35
FLOOR = "durable-floor"
WARMUP_SECONDS = 1.0
SLICE_SECONDS = 2.0  # one server's share of a round
SHUTDOWN_GRACE = 5.0
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0
WRK_INSTALL_HINT = "apt-get install -y wrk  (Debian/Ubuntu; brew install wrk on macOS)"

RULES = """\
version: 1
channels:
  bench-hook:
    type: webhook
    url: ""                 # empty: log-only, no receiver needed
rules:
  - name: bench-course-completed
    events: [course_completed]
    notify: [bench-hook]
    template: course_completed
"""

# A wrk script: POST with a distinct body per request (a per-thread counter spliced
# into one JSON field), counting 202 and other answers; done() prints one JSON line.
WRK_SCRIPT = """\
local prefix = [==[{prefix}]==]
local suffix = [==[{suffix}]==]
local threads = {{}}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  tag = (args[1] or "bench") .. "-t" .. id .. "-"
  sent, ok, other = 0, 0, 0
  headers = {{["Content-Type"] = "application/json"}}
end

function request()
  sent = sent + 1
  return wrk.format("POST", nil, headers, prefix .. tag .. sent .. suffix)
end

function response(status, hdrs, body)
  if status == 202 then ok = ok + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local s, o, x = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    o = o + t:get("ok")
    x = x + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"duration_us":%d,"requests":%d,"sent":%d,"ok":%d,"other":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.duration, summary.requests, s, o, x,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class BenchError(Exception):
    """Something broke: the run's figures cannot be trusted."""


# -- helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(server cpus, load-generator cpus, description)."""
    available = sorted(os.sched_getaffinity(0))
    if not pin:
        return None, None, f"not pinned ({len(available)} cpus shared)"
    if len(available) < 2:
        return None, None, f"not pinned (only {len(available)} cpu available)"
    server, generator = {available[-1]}, {available[0]}
    return server, generator, f"server on cpu {available[-1]}, load generator on cpu {available[0]}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), 0 once it is gone or
    where there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def pinned(cpus: set[int] | None) -> Any:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def filesystem_of(path: Path) -> str:
    best, fstype = "", "?"
    with suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
                best, fstype = fields[1], fields[2]
    return fstype


def tail(path: Path, lines: int = 20) -> str:
    with suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # 127.0.0.1 only
        return json.loads(response.read() or b"null")


# -- servers -----------------------------------------------------------------------------


class Server:
    """A server subprocess: started pinned, waited for, always stopped.

    It runs in its own session (process group), which ``pause`` freezes with SIGSTOP and
    ``resume`` thaws with SIGCONT; ``stop`` resumes a frozen server before SIGTERM."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self, port: int, cpus: set[int] | None) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pinned(cpus),
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + tail(self.log)
                )
            with (
                suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1.0) as ok,
            ):
                ok.read()
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not answer /healthz within {START_TIMEOUT:g}s")

    def signal_group(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)  # start_new_session: pgid == pid

    def pause(self) -> None:
        """Freeze the whole process group (SIGSTOP): it uses no CPU until ``resume``."""
        self.signal_group(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.signal_group(signal.SIGCONT)
            self.paused = False

    def stop(self) -> int | None:
        """Resume if frozen, SIGTERM, then SIGKILL if it does not exit in time; returns
        the exit code."""
        proc = self.proc
        if proc is None:
            return None
        self.resume()  # a stopped process would not act on SIGTERM
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SHUTDOWN_GRACE + 10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        return proc.returncode


# -- load generators -------------------------------------------------------------------


class Generator:
    name = ""

    def run(
        self, url: str, *, tag: str, connections: int, duration: float, cpus: set[int] | None
    ) -> dict[str, Any]:
        raise NotImplementedError


class Wrk(Generator):
    name = "wrk"

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        prefix, suffix = (part.decode() for part in body_parts(EVENT_FILE))
        if "]==]" in prefix + suffix:
            raise BenchError("event body cannot be embedded in a Lua long string")
        self.script = workdir / "post.lua"
        self.script.write_text(WRK_SCRIPT.format(prefix=prefix, suffix=suffix))

    def run(
        self, url: str, *, tag: str, connections: int, duration: float, cpus: set[int] | None
    ) -> dict[str, Any]:
        seconds = max(1, round(duration))  # wrk takes whole seconds
        argv = [
            self.binary,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={REQUEST_TIMEOUT:g}s",
            "-s",
            str(self.script),
            url,
            "--",
            tag,
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + REQUEST_TIMEOUT + 30,
            preexec_fn=pinned(cpus),
            check=False,
        )
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
        if done.returncode != 0 or line is None:
            raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        raw = json.loads(line.removeprefix("WRKJSON "))
        elapsed = raw["duration_us"] / 1e6
        answered = raw["ok"] + raw["other"]
        errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
        return {
            "generator": "wrk",
            "duration_s": elapsed,
            "sent": raw["sent"],
            "answered": answered,
            "ok": raw["ok"],
            "unexpected_status": raw["other"],
            "errors": errors,
            "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]},
            "unanswered": raw["sent"] - answered,
            "rps": answered / elapsed if elapsed else 0.0,
            "p50_ms": raw["p50_us"] / 1000 if answered else None,
            "p99_ms": raw["p99_us"] / 1000 if answered else None,
        }


class PyLoadgen(Generator):
    name = "loadgen.py"

    def run(
        self, url: str, *, tag: str, connections: int, duration: float, cpus: set[int] | None
    ) -> dict[str, Any]:
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            url,
            "--body",
            str(EVENT_FILE),
            "--field",
            DEFAULT_FIELD,
            "--tag",
            tag,
            "--connections",
            str(connections),
            "--duration",
            str(duration),
            "--timeout",
            str(REQUEST_TIMEOUT),
        ]
        done = subprocess.run(
            argv,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=duration + REQUEST_TIMEOUT + 30,
            preexec_fn=pinned(cpus),
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"loadgen.py failed ({done.returncode}):\n{done.stderr}")
        return json.loads(done.stdout)


def pick_generator(choice: str, workdir: Path) -> tuple[Generator, str]:
    binary = shutil.which("wrk")
    if choice == "wrk" and binary is None:
        raise BenchError(f"--generator wrk, but wrk is not on PATH; install: {WRK_INSTALL_HINT}")
    if choice in ("auto", "wrk") and binary is not None:
        return Wrk(binary, workdir), f"wrk ({binary}, 1 thread)"
    note = (
        "bench/loadgen.py (aiohttp client, Python; on one core it saturates near the bare"
        " server's rate, so the bare figure is generator-bound and the ratio flattered)"
    )
    if binary is None:
        note += (
            f"; wrk not found — install it for a generator that is not itself the bottleneck:"
            f" {WRK_INSTALL_HINT}"
        )
    return PyLoadgen(), note


# -- interleaved load ---------------------------------------------------------------------


def plan(duration: float, quick: bool) -> tuple[int, float]:
    """(rounds, slice seconds): 2 s slices filling ``duration``; --quick: 2 x 1 s.
    The number of rounds is even, so that each order (bare first, router first) runs
    equally often and a linear drift of the machine's speed cancels out."""
    if quick:
        return 2, 1.0
    slice_s = min(SLICE_SECONDS, duration)
    rounds = max(1, int(duration / slice_s + 0.5))
    return rounds + rounds % 2, slice_s


@contextmanager
def thawed(server: Server) -> Iterator[None]:
    """Resume a frozen server for the block, freeze it again afterwards."""
    server.resume()
    try:
        yield
    finally:
        server.pause()


def load_slice(
    server: Server,
    port: int,
    generator: Generator,
    *,
    tag: str,
    connections: int,
    seconds: float,
    cpus: set[int] | None,
) -> dict[str, Any]:
    """Thaw ``server``, load it for ``seconds``, freeze it again."""
    with thawed(server):
        return generator.run(
            f"http://127.0.0.1:{port}/events",
            tag=tag,
            connections=connections,
            duration=seconds,
            cpus=cpus,
        )


def merge_counts(parts: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for name, count in (part.get(key) or {}).items():
            total[name] = total.get(name, 0) + count
    return total


def median_of(parts: list[dict[str, Any]], key: str) -> float | None:
    values = [part[key] for part in parts if part[key] is not None]
    return statistics.median(values) if values else None


def aggregate(slices: list[dict[str, Any]], warmup: dict[str, Any]) -> dict[str, Any]:
    """One server's figures over its slices: sums, rps = all answers / all measured
    seconds, p50/p99 = the median of the per-slice p50/p99."""
    seconds = sum(part["duration_s"] for part in slices)
    counts = ("sent", "answered", "ok", "unexpected_status", "errors", "unanswered")
    result: dict[str, Any] = {
        "generator": slices[0]["generator"],
        "duration_s": seconds,
        **{key: sum(part[key] for part in slices) for key in counts},
        "error_kinds": merge_counts(slices, "error_kinds"),
    }
    if any("statuses" in part for part in slices):  # loadgen.py reports them
        result["statuses"] = merge_counts(slices, "statuses")
    result["rps"] = result["answered"] / seconds if seconds else 0.0
    result["p50_ms"] = median_of(slices, "p50_ms")
    result["p99_ms"] = median_of(slices, "p99_ms")
    result["slices"] = slices
    result["warmup"] = warmup
    return result


def router_store_check(db: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Events in SQLite against 202 answers (the warm-up and every slice together).

    Every 202 must be in the table. Requests still in flight when the generator stopped
    (wrk drops them at its deadline) may be stored without their 202 having been read,
    so the table may hold up to that many more."""
    phases = [result["warmup"], *result["slices"]]
    accepted = sum(p["ok"] for p in phases)
    unanswered = sum(p["unanswered"] for p in phases)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        states = dict(conn.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
        deliveries = dict(
            conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
        )
    finally:
        conn.close()
    ok = accepted <= events <= accepted + unanswered
    return {
        "events_in_db": events,
        "answers_202": accepted,
        "unanswered_at_cutoff": unanswered,
        "event_states": states,
        "delivery_states": deliveries,
        "ok": ok,
    }


# -- main --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report_table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| server | requests/s (all slices) | p50 ms (median of slices)"
        " | p99 ms (median of slices) | errors/non-202 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        bad = r["errors"] + r["unexpected_status"]
        lines.append(
            f"| {name} | {r['rps']:.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {bad} |"
        )
    return "\n".join(lines)


def router_env(synchronous: str) -> dict[str, str]:
    # The router reads ROUTER_* from the environment: start from a clean slate so a
    # token or store setting of the caller's shell does not change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(
        ROUTER_SQLITE_SYNCHRONOUS=synchronous,
        ROUTER_SHUTDOWN_GRACE=str(SHUTDOWN_GRACE),
        ROUTER_LOG_FORMAT="json",
    )
    return env


def router_argv(rules: Path, db: str, port: int) -> list[str]:
    """The command line of a benchmarked ``router serve`` (shared by every bench)."""
    return [
        sys.executable,
        *("-m", "router.cli", "serve", "--rules", str(rules), "--templates", str(TEMPLATES)),
        *("--db", db, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=12.0, help="measured seconds per server (2 s slices)"
    )
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds of 1 s per server (CI smoke)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--generator", choices=["auto", "wrk", "loadgen"], default="auto", help="default: auto"
    )
    parser.add_argument(
        "--synchronous", choices=["FULL", "NORMAL"], default="FULL", help="router SQLite fsync"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    duration = 2.0 if args.quick else args.duration
    if duration <= 0 or args.connections < 1:
        parser.error("--duration must be > 0 and --connections >= 1")
    rounds, slice_s = plan(duration, args.quick)

    server_cpus, generator_cpus, pin_note = cpu_plan(not args.no_pin)
    if generator_cpus is not None:
        os.sched_setaffinity(0, generator_cpus)  # keep this driver off the server's core
    run_id = f"{os.getpid()}-{int(time.time())}"
    results: dict[str, dict[str, Any]] = {}
    round_ratios: list[float | None] = []
    store: dict[str, Any] | None = None
    problems: list[str] = []

    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        workdir = Path(tmp)
        db = workdir / "router.db"
        rules = workdir / "rules.yaml"
        rules.write_text(RULES)
        try:
            generator, generator_note = pick_generator(args.generator, workdir)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"load generator: {generator_note}")
        print(f"cpus: {pin_note}")
        print(
            f"load: {args.connections} connections; all servers up at once, each warmed up"
            f" {WARMUP_SECONDS:g}s, then {rounds} rounds x {slice_s:g}s per server, interleaved"
            f" (order alternating each round), the idle servers frozen with SIGSTOP;"
            f" body {EVENT_FILE.relative_to(ROOT)} with a distinct {DEFAULT_FIELD} per request"
        )
        print(
            f"router store: {db} ({filesystem_of(workdir)}), WAL,"
            f" synchronous={args.synchronous}; --log-level WARNING\n",
            flush=True,
        )
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        bare_port, floor_port, router_port = sorted(ports)
        targets = {
            "bare-aiohttp": (
                Server(
                    "bare-aiohttp",
                    [sys.executable, "-m", "bench.bare_server", "--port", str(bare_port)],
                    dict(os.environ),
                    workdir / "bare.log",
                ),
                bare_port,
            ),
            FLOOR: (
                Server(
                    FLOOR,
                    [
                        *(sys.executable, "-m", "bench.floor_server"),
                        *("--port", str(floor_port), "--db", str(workdir / "floor.db")),
                    ],
                    dict(os.environ),
                    workdir / "floor.log",
                ),
                floor_port,
            ),
            "router": (
                Server(
                    "router",
                    router_argv(rules, str(db), router_port),
                    router_env(args.synchronous),
                    workdir / "router.log",
                ),
                router_port,
            ),
        }
        order = list(targets)
        codes: dict[str, int | None] = {}

        def load(name: str, tag: str, seconds: float) -> dict[str, Any]:
            server, port = targets[name]
            return load_slice(
                server,
                port,
                generator,
                tag=f"{run_id}-{tag}",
                connections=args.connections,
                seconds=seconds,
                cpus=generator_cpus,
            )

        try:
            try:
                for name, (server, port) in targets.items():
                    server.start(port, server_cpus)
                    server.pause()
                    print(f"  {name}: up on 127.0.0.1:{port}", flush=True)
                print(f"  warming up each server {WARMUP_SECONDS:g}s", flush=True)
                warmups = {name: load(name, "warm", WARMUP_SECONDS) for name in order}
                slices: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
                for index in range(rounds):
                    turn = order if index % 2 == 0 else order[::-1]
                    this_round = {name: load(name, f"r{index}", slice_s) for name in turn}
                    for name, result in this_round.items():
                        slices[name].append(result)
                    bare_rps = this_round["bare-aiohttp"]["rps"]
                    ratio_now = this_round["router"]["rps"] / bare_rps if bare_rps else None
                    round_ratios.append(ratio_now)
                    print(
                        f"  round {index + 1}/{rounds} ({turn[0]} first): "
                        + ", ".join(f"{n} {r['rps']:.0f} req/s" for n, r in this_round.items())
                        + f"; ratio {fmt(ratio_now)}",
                        flush=True,
                    )
                results = {name: aggregate(slices[name], warmups[name]) for name in order}
                # Frozen since its last slice, the router has not moved: thaw it and ask.
                with thawed(targets["router"][0]), suppress(OSError, ValueError):
                    results["router"]["readyz_after_load"] = get_json(
                        f"http://127.0.0.1:{router_port}/readyz"
                    )
            finally:
                for name, (server, _port) in targets.items():
                    server.resume()
                    codes[name] = server.stop()
            for name, (server, _port) in targets.items():
                if codes[name] not in (0, -signal.SIGTERM):
                    problems.append(f"{name} exited with {codes[name]}:\n{tail(server.log)}")
            router_log = targets["router"][0].log
            warnings = [
                ln for ln in router_log.read_text(errors="replace").splitlines() if ln.strip()
            ]
            if warnings:
                print(f"  router logged {len(warnings)} line(s) at WARNING or above, e.g.:")
                print("    " + warnings[0][:300])
            store = router_store_check(db, results["router"])
        except (BenchError, subprocess.TimeoutExpired, OSError, sqlite3.Error) as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1

    print()
    print(report_table(results))
    bare, router = results["bare-aiohttp"], results["router"]
    ratio = router["rps"] / bare["rps"] if bare["rps"] else 0.0
    print()
    extra = store["unanswered_at_cutoff"]
    print(
        f"router durability: events in SQLite = {store['events_in_db']},"
        f" 202 answers = {store['answers_202']}"
        + (f" (+ up to {extra} in flight when the generator stopped)" if extra else "")
        + (" -> OK" if store["ok"] else " -> MISMATCH")
    )
    print(f"  events by state: {store['event_states']}; deliveries: {store['delivery_states']}")
    if "readyz_after_load" in router:
        ready = router["readyz_after_load"]
        print(
            f"  backlog right after the load: events_pending={ready.get('events_pending')},"
            f" deliveries_pending={ready.get('deliveries_pending')}"
        )
    for name, r in results.items():
        if r["errors"] or r["unexpected_status"]:
            problems.append(
                f"{name}: {r['errors']} errors {r.get('error_kinds') or ''},"
                f" {r['unexpected_status']} non-202 answers"
            )
    if not store["ok"]:
        problems.append("router: events in SQLite do not match the 202 answers")
    floor = results[FLOOR]
    floor_ratio = floor["rps"] / bare["rps"] if bare["rps"] else 0.0
    router_vs_floor = router["rps"] / floor["rps"] if floor["rps"] else 0.0
    print(
        f"floor ({FLOOR}/bare) = {floor_ratio:.2f}: the most a durable ingest on this stack"
        " reached here (bench/floor_server.py)"
    )
    print(f"router/floor = {router_vs_floor:.2f}: what the router's own work leaves of it")
    print("ratio per round (router/bare): " + ", ".join(fmt(r) for r in round_ratios))
    print(f"ratio (router/bare) = {ratio:.2f} (target >= {TARGET_RATIO})")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "generator": generator.name,
                    "connections": args.connections,
                    "duration_s": rounds * slice_s,
                    "warmup_s": WARMUP_SECONDS,
                    "rounds": rounds,
                    "slice_s": slice_s,
                    "cpus": pin_note,
                    "synchronous": args.synchronous,
                    "results": results,
                    "router_store": store,
                    "round_ratios": round_ratios,
                    "ratio": ratio,
                    "floor_ratio": floor_ratio,
                    "router_vs_floor": router_vs_floor,
                    "target_ratio": TARGET_RATIO,
                    "problems": problems,
                },
                indent=2,
            )
            + "\n"
        )
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
