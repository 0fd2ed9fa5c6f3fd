"""Real ``router serve`` subprocesses for the crash and replica tests."""

import asyncio
import copy
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

STARTUP_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(*logs: Path, lines: int = 40) -> str:
    """The end of each log, for assertion messages."""
    parts = []
    for log in logs:
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        parts.append(f"--- {log.name} (last {lines} lines) ---")
        parts.extend(text.splitlines()[-lines:])
    return "\n".join(parts)


def unique_event(n: int, base: dict[str, Any], first_user: int) -> dict[str, Any]:
    """A copy of ``base`` with its own identity (request id and user id)."""
    event = copy.deepcopy(base)
    event["metadata"]["request_id"] = str(uuid.uuid4())
    event["body"]["user"]["id"] = str(first_user + n)
    return event


class RouterProcess:
    """One ``router serve`` subprocess with its own log file; quick retries for tests."""

    def __init__(
        self,
        name: str,
        *,
        db: str,
        rules: Path,
        templates: Path,
        workdir: Path,
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        environment = {
            **os.environ,
            "ROUTER_BACKOFF_BASE": "0.05",
            "ROUTER_BACKOFF_CAP": "0.5",
            "ROUTER_SHUTDOWN_GRACE": "5",
            **(env or {}),
        }
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router.cli",
                "serve",
                "--rules",
                str(rules),
                "--templates",
                str(templates),
                "--db",
                db,
                "--port",
                str(port),
                "--log-format",
                "json",
            ],
            env=environment,
            cwd=workdir,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    async def wait_healthy(self, session: aiohttp.ClientSession) -> None:
        """Wait for ``/healthz``; fail with the log if the process dies or hangs."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{self.name} exited with {self.proc.returncode} during startup\n"
                    + tail(self.log)
                )
            try:
                async with session.get(f"{self.base}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        pytest.fail(f"{self.name} not healthy after {STARTUP_TIMEOUT}s\n" + tail(self.log))

    async def ready(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """The ``/readyz`` answer."""
        async with session.get(f"{self.base}/readyz") as resp:
            return await resp.json()

    def kill(self) -> None:
        """Make sure the process is gone (used in ``finally``)."""
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._log_file.close()
