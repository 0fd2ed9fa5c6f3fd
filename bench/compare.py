"""``python -m bench --compare REF``: the suite for the working tree and for another git
ref, interleaved in one run, with new/old ratios per figure.

The ref is checked out (detached) into a ``git worktree`` under a cache directory,
keyed by its commit hash, with its own venv holding its own dependencies and plugin
entry points; both are kept for the next comparison of the same commit. With
``reuse_venv`` the ref runs on this interpreter instead, its tree put first on
``PYTHONPATH`` (so ``router``, its plugins and ``bench`` import from the ref): no
install, right only when the ref's dependencies and entry points are the same.

Each round runs every scenario once per side, one ``python -m bench --only NAME``
subprocess at a time, the order of the sides reversed every round, so that a drift of
the machine's speed hits both alike (as ``bench/ingest.py`` alternates servers). A
figure is each row's first number in "our figure" and its ratio; each side's value is
the median over the rounds.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
DASH = "—"
INSTALL_TIMEOUT = 1800.0


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "router-bench"


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()


def resolve(ref: str) -> str:
    """The full commit hash of ``ref`` (a branch, tag, hash or ``HEAD~2``)."""
    try:
        return git("rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"--compare: not a commit: {ref!r} ({exc.stderr.strip()})") from exc


def prepare(commit: str, cache: Path, reuse_venv: bool) -> tuple[Path, str, dict[str, str]]:
    """Check ``commit`` out under ``cache`` (once) and give its tree, python and env."""
    tree = cache / commit
    if not (tree / "bench" / "__main__.py").exists():
        cache.mkdir(parents=True, exist_ok=True)
        git("worktree", "prune")  # a cache dir removed by hand leaves a stale record
        git("worktree", "add", "--detach", "--force", str(tree), commit)
    env = dict(os.environ)
    if reuse_venv:
        paths = [str(tree), str(tree / "plugins"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return tree, sys.executable, env
    python = tree / ".venv" / "bin" / "python"
    installed = tree / ".venv" / "installed"
    if not installed.exists():  # marker written last: a broken install is redone
        print(f"== installing {commit[:12]} into {tree}/.venv", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(tree / ".venv")],
            check=True,
            timeout=300,
        )
        packages = ["-e", ".[test]"]
        if (tree / "examples" / "router-mattermost").is_dir():
            packages += ["-e", "examples/router-mattermost"]
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages],
            cwd=tree,
            check=True,
            timeout=INSTALL_TIMEOUT,
        )
        installed.write_text(commit + "\n")
    env.pop("PYTHONPATH", None)
    return tree, str(python), env


def run_side(
    python: str, tree: Path, env: dict[str, str], name: str, quick: bool, out: Path
) -> dict[str, Any]:
    """One ``python -m bench --only NAME`` in ``tree``; its JSON (rows, broken)."""
    argv = [python, "-m", "bench", "--only", name, "--json", str(out)]
    argv.append("--quick" if quick else "--full")
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if not out.exists():
        tail = (done.stdout + done.stderr)[-2000:]
        return {"rows": [], "broken": [name], "error": f"exit {done.returncode}: {tail}"}
    return json.loads(out.read_text())


def figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each row's first number in "our figure", and its ratio, by a stable name."""
    got: dict[str, float] = {}
    for r in rows:
        match = NUMBER.search(str(r.get("ours", "")))
        if match and not str(r.get("ours", "")).startswith("ERROR"):
            got[f"{r['scenario']} [ours]"] = float(match.group().replace(",", ""))
        if isinstance(r.get("ratio"), int | float):
            got[f"{r['scenario']} [ratio]"] = float(r["ratio"])
    return got


def compare(
    ref: str,
    names: list[str],
    quick: bool,
    rounds: int,
    cache: Path,
    reuse_venv: bool,
) -> dict[str, Any]:
    """Both sides, interleaved; per figure each side's median and new/old."""
    commit = resolve(ref)
    old_tree, old_python, old_env = prepare(commit, cache, reuse_venv)
    sides = {
        "new": (ROOT, sys.executable, dict(os.environ)),
        "old": (old_tree, old_python, old_env),
    }
    values: dict[str, dict[str, list[float]]] = {"new": {}, "old": {}}
    broken: dict[str, list[str]] = {"new": [], "old": []}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        for number in range(rounds):
            order = ["new", "old"] if number % 2 == 0 else ["old", "new"]
            for name in names:
                for side in order:
                    tree, python, env = sides[side]
                    print(f"== round {number + 1}: {name} ({side})", file=sys.stderr, flush=True)
                    out = Path(tmp) / f"{side}-{name}-{number}.json"
                    data = run_side(python, tree, env, name, quick, out)
                    if data.get("broken"):
                        broken[side].append(f"{name} (round {number + 1})")
                    for key, value in figures(data["rows"]).items():
                        values[side].setdefault(key, []).append(value)
    table = []
    for key in list(dict.fromkeys([*values["new"], *values["old"]])):
        new = values["new"].get(key)
        old = values["old"].get(key)
        new_m = statistics.median(new) if new else None
        old_m = statistics.median(old) if old else None
        ratio = new_m / old_m if new_m is not None and old_m else None
        table.append({"figure": key, "new": new_m, "old": old_m, "new_over_old": ratio})
    return {
        "ref": ref,
        "commit": commit,
        "mode": "quick" if quick else "full",
        "rounds": rounds,
        "scenarios": names,
        "figures": table,
        "values": values,
        "broken": broken,
    }


def markdown(result: dict[str, Any]) -> str:
    def show(value: float | None) -> str:
        return DASH if value is None else f"{value:,.4g}"

    lines = [
        f"| figure | new (working tree) | old ({result['ref']} = {result['commit'][:12]})"
        " | new/old |",
        "| --- | ---: | ---: | ---: |",
    ]
    for f in result["figures"]:
        ratio = DASH if f["new_over_old"] is None else f"{f['new_over_old']:.2f}"
        lines.append(f"| {f['figure']} | {show(f['new'])} | {show(f['old'])} | {ratio} |")
    return "\n".join(lines)
