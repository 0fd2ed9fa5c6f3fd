"""Smoke test of ``python -m bench --compare REF``: HEAD against HEAD on the cheapest
scenario, two interleaved rounds, the ref checked out into a worktree under a cache
directory and run on this venv (``--reuse-venv``: a fresh venv would take minutes to
install). The figures are not judged, only that both sides were measured and paired."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import compare

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Path]:
    cache = tmp_path / "cache"
    yield cache
    # The worktree is recorded in the shared repository: remove it, not only its files.
    for tree in cache.glob("*"):
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)


def test_the_ref_runs_from_its_own_tree(cache: Path) -> None:
    commit = compare.resolve("HEAD")
    tree, python, env = compare.prepare(commit, cache, reuse_venv=True)
    assert tree == cache / commit
    done = subprocess.run(
        [python, "-c", "import bench, router; print(router.__file__); print(bench.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(Path(line).is_relative_to(tree) for line in done.stdout.split()), done.stdout
    # Prepared once, reused by commit: a second call does not check it out again.
    assert compare.prepare(commit, cache, reuse_venv=True)[0] == tree


def test_unknown_ref_is_a_precise_error() -> None:
    with pytest.raises(SystemExit, match="not a commit: 'no-such-ref-xyz'"):
        compare.resolve("no-such-ref-xyz")


@pytest.mark.timeout(120)
def test_compare_head_with_head(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    argv = [sys.executable, "-m", "bench", "--quick", "--only", "rules", "--compare", "HEAD"]
    argv += ["--reuse-venv", "--cache-dir", str(cache), "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["commit"] == compare.resolve("HEAD") and data["rounds"] == 2
    assert data["broken"] == {"new": [], "old": []}
    # The rounds alternate the sides: old first in the second round.
    order = [line for line in done.stderr.splitlines() if line.startswith("== round")]
    assert order == [
        "== round 1: rules (new)",
        "== round 1: rules (old)",
        "== round 2: rules (old)",
        "== round 2: rules (new)",
    ], order
    [ours, ratio] = data["figures"]
    assert ours["figure"].startswith("4. rule evaluation") and ours["figure"].endswith("[ours]")
    for figure in (ours, ratio):
        assert figure["new"] > 0 and figure["old"] > 0, figure
        assert figure["new_over_old"] == pytest.approx(figure["new"] / figure["old"])
    assert all(len(v) == 2 for side in data["values"].values() for v in side.values())
    assert "| figure | new (working tree) | old (HEAD = " in done.stdout
