"""Issue 18, the attacks as a suite: the coverage-guided fuzzer over event parsing,
the rules loader and template compilation (``tests/fuzz/fuzz_router.py``), run for a
bounded time from its seed corpus. Any crash, hang (``-timeout``) or memory blow-up
(``-rss_limit_mb``) fails the test, with the input that caused it."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent / "fuzz"
SECONDS = 10


def test_the_fuzzer_finds_no_crash_hang_or_blow_up(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus", corpus)  # libFuzzer adds what it finds here
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(FUZZ / "fuzz_router.py"),
            str(corpus),
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={artifacts}/",
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    output = done.stdout + done.stderr
    found = sorted(p.name for p in artifacts.iterdir())
    assert done.returncode == 0 and not found, f"{found}\n{output[-4000:]}"
    runs = re.search(r"Done (\d+) runs", output)
    assert runs and int(runs[1]) > 100, output[-2000:]
