"""The container image: the Containerfile built and run on this machine with buildah.

No registry image can be pulled here and no container daemon runs, so the test makes a
local stand-in for ``python:3.11-slim`` from Debian packages (debootstrap, cached in
``ROUTER_CONTAINER_CACHE``, default /var/tmp/router-container-test, under a tag keyed
by the recipe), builds the Containerfile on it with ``buildah bud`` (vfs storage,
chroot isolation), then runs the image's own entrypoint with ``buildah run``: the
router serves on the host's loopback, delivers to a local receiver, and drains on
SIGTERM. Measured on the shared 2-core machine: cold (no cached base) 164 s, of which
the base 89 s and the image 47 s; warm 96 s. buildah's vfs storage copies every layer for
each working container, hence the minute beyond the build.
"""

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router import __version__
from router.settings import Settings
from tests.conftest import EXAMPLES, ROOT, example
from tests.processes import free_port
from tests.receiver import SECRET, WebhookReceiver

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]

CACHE = Path(os.environ.get("ROUTER_CONTAINER_CACHE", "/var/tmp/router-container-test"))
# The base image's recipe: Debian's python3 (3.11 in bookworm) with venv and CA roots.
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP = ("--variant=minbase", "--include=python3,python3-venv,ca-certificates", SUITE)
# What a build may add on top of the base (the venv with every dependency: ~70 MB).
MAX_ADDED_BYTES = 120 * 1024 * 1024
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Buildah:
    """``buildah`` with the test's own storage (vfs: no overlay mounts needed)."""

    root: Path

    def argv(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def __call__(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode:
            raise AssertionError(f"buildah {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return done.stdout

    def exists(self, image: str) -> bool:
        done = subprocess.run(
            self.argv("inspect", "--type", "image", image), capture_output=True, check=False
        )
        return done.returncode == 0

    def inspect(self, image: str) -> dict[str, Any]:
        return json.loads(self("inspect", "--type", "image", image))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One base build at a time when several test runs share the cache."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def buildah() -> Buildah:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: apt-get install buildah debootstrap"
            " (.ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("debootstrap and buildah's chroot isolation need root here")
    CACHE.mkdir(parents=True, exist_ok=True)
    return Buildah(CACHE)


@pytest.fixture(scope="module")
def base_image(buildah: Buildah) -> str:
    """A stand-in for python:3.11-slim: Debian's minimal base with python3 and venv."""
    recipe = (*DEBOOTSTRAP, MIRROR, "no apt cache or lists")  # what the base is made of
    tag = "localhost/router-test-base:" + hashlib.sha256(repr(recipe).encode()).hexdigest()[:16]
    with locked(CACHE / "base.lock"):
        if buildah.exists(tag):
            return tag
        work = CACHE / f"base-{uuid.uuid4().hex}"
        rootfs = work / "rootfs"
        try:
            started = time.monotonic()
            subprocess.run(
                ["debootstrap", *DEBOOTSTRAP, str(rootfs), MIRROR],
                check=True,
                capture_output=True,
                timeout=900,
            )
            # The package cache and lists are not part of a base image.
            for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
                leftover.unlink()
            shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
            subprocess.run(
                ["tar", "-C", str(rootfs), "-cf", str(work / "base.tar"), "."], check=True
            )
            container = buildah("from", "scratch").strip()
            buildah("add", container, str(work / "base.tar"), "/")
            buildah("commit", "--rm", container, tag)
            print(f"base image {tag} built in {time.monotonic() - started:.0f} s")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tag


def host_pip_options() -> list[str]:
    """Build arguments that let pip in the build reach the index as this host's pip does.

    Read from ``pip config list`` (files and ``PIP_*`` variables): a CA bundle is
    mounted read-only and named by PIP_CERT; http(s) index URLs are passed on; file://
    indexes and find-links are host paths the build cannot see and are left out.
    """
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        scope_key, _, value = line.partition("=")
        key = scope_key.rpartition(".")[2]
        found[key] = value.strip().strip("'\"")
    env = {"cert": "PIP_CERT", "index-url": "PIP_INDEX_URL", "extra-index-url": None}
    found.update({k: os.environ[v] for k, v in env.items() if v and v in os.environ})
    cert = found.get("cert") or ssl.get_default_verify_paths().cafile
    options = []
    if cert and Path(cert).is_file():
        options += [
            "--volume",
            f"{cert}:/run/pip-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/pip-ca.crt",
        ]
    if found.get("index-url", "").startswith(("http://", "https://")):
        options += ["--build-arg", f"PIP_INDEX_URL={found['index-url']}"]
    extra = [u for u in found.get("extra-index-url", "").split() if u.startswith("http")]
    if extra:
        options += ["--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(extra)}"]
    return options


@pytest.fixture(scope="module")
def image(buildah: Buildah, base_image: str) -> Iterator[str]:
    tag = f"localhost/router-test:{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    buildah(
        "bud",
        "--format",
        "docker",  # OCI image configs have no HEALTHCHECK
        "--isolation",
        "chroot",
        "--pull=never",
        "--build-arg",
        f"BASE={base_image}",
        "--build-arg",
        f"VERSION={__version__}",
        "--build-arg",
        "SOURCE=https://example.invalid/router",
        *host_pip_options(),
        "--tag",
        tag,
        "--file",
        str(ROOT / "Containerfile"),
        str(ROOT),
        timeout=1200,
    )
    print(f"image {tag} built in {time.monotonic() - started:.0f} s")
    yield tag
    buildah("rmi", tag)


@pytest.fixture
def container(buildah: Buildah, image: str) -> Iterator[str]:
    """A working container of the image. buildah run would mount an anonymous volume
    over a bind mount at a VOLUME path (docker, podman and the kubelet let the bind
    mount win), so the test drops the declaration from its working copy."""
    name = buildah("from", "--pull=never", "--name", f"router-test-{uuid.uuid4().hex[:8]}", image)
    name = name.strip()
    buildah("config", "--volume", "/data-", name)
    yield name
    buildah("rm", name)


def config(buildah: Buildah, image: str) -> dict[str, Any]:
    return buildah.inspect(image)["Docker"]["config"]


def test_image_metadata(buildah: Buildah, image: str, base_image: str) -> None:
    cfg = config(buildah, image)
    env = dict(item.split("=", 1) for item in cfg["Env"])
    # Every ROUTER_* variable the image sets is a setting of `router serve`.
    settings = {f"ROUTER_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env if name.startswith("ROUTER_")} <= settings
    assert cfg["Entrypoint"] == ["router", "serve"]
    assert env["ROUTER_HOST"] == "0.0.0.0"
    assert cfg["ExposedPorts"] == {f"{env['ROUTER_PORT']}/tcp": {}}
    assert env["ROUTER_DB"].startswith("/data/") and "/data" in cfg["Volumes"]
    assert env["ROUTER_RULES"] == "/config/rules.yaml" and cfg["WorkingDir"] == "/config"
    user, _, group = cfg["User"].partition(":")
    assert user.isdigit() and int(user) != 0 and group.isdigit() and int(group) != 0
    assert cfg["StopSignal"] == "SIGTERM"
    # A stop takes up to about twice the grace: it must end within docker's 10 s.
    assert 2 * float(env["ROUTER_SHUTDOWN_GRACE"]) + 2 <= 10
    test = cfg["Healthcheck"]["Test"]
    assert test[:2] == ["CMD", "python3"] and "/healthz" in test[-1]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__ == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.source"] == "https://example.invalid/router"
    # The build stage's pip settings (a host CA path, index URLs) stay out of the image.
    history = json.dumps(buildah.inspect(image)["Docker"]["history"])
    assert "PIP_" not in history and "pip-ca" not in history and "PIP_" not in json.dumps(cfg)
    # Small: what the image adds to its base (docs/container.md quotes it).
    layers = buildah.inspect(image)["Docker"]["rootfs"]["diff_ids"]
    base_layers = buildah.inspect(base_image)["Docker"]["rootfs"]["diff_ids"]
    assert layers[: len(base_layers)] == base_layers
    added = image_bytes(buildah, image) - image_bytes(buildah, base_image)
    print(f"the image adds {added / 1e6:.0f} MB to its base")
    assert 0 < added < MAX_ADDED_BYTES


def image_bytes(buildah: Buildah, image: str) -> int:
    """The image's unpacked size: what its root filesystem takes on disk."""
    mount = buildah("from", "--pull=never", image).strip()
    try:
        path = buildah("mount", mount).strip()
        done = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[0])
    finally:
        buildah("rm", mount)


def test_a_mounted_config_replaces_the_example_rules(
    buildah: Buildah, image: str, container: str, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "rules.yaml").write_text("version: 1\nrules:\n  - nme: typo\n")
    entrypoint = config(buildah, image)["Entrypoint"]
    done = subprocess.run(
        buildah.argv(
            "run",
            "--isolation",
            "chroot",
            "--volume",
            f"{config_dir}:/config:ro",
            container,
            "--",
            *entrypoint,
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "/config/rules.yaml:3:5: rules[0].nme: unknown key 'nme'" in done.stderr
    assert "not starting" in done.stderr


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (buildah run -> chroot runtime -> exec -> router)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def router_process(buildah_pid: int) -> int | None:
    for pid in descendants(buildah_pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"python3") and argv[1:3] == [b"/opt/router/bin/router", b"serve"]:
                return pid
    return None


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


async def run_healthcheck(buildah: Buildah, container: str, image: str, port: int) -> int:
    """The image's HEALTHCHECK command, run inside the container as docker would."""
    test = config(buildah, image)["Healthcheck"]["Test"]
    argv = buildah.argv(
        "run", "--isolation", "chroot", "--env", f"ROUTER_PORT={port}", container, "--", *test[1:]
    )
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 60)


async def test_the_image_serves_delivers_and_drains(
    buildah: Buildah, image: str, container: str, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    uid, gid = (int(part) for part in config(buildah, image)["User"].split(":"))
    os.chown(data, uid, gid)
    port = free_port()
    log = tmp_path / "router.log"
    entrypoint = config(buildah, image)["Entrypoint"]
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *buildah.argv(
                "run",
                "--isolation",
                "chroot",
                "--env",
                f"ROUTER_PORT={port}",
                "--env",
                f"AUDIT_WEBHOOK_URL={receiver.url}",
                "--env",
                f"AUDIT_WEBHOOK_SECRET={SECRET}",
                "--volume",
                f"{data}:/data",
                container,
                "--",
                *entrypoint,
            ),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                assert proc.returncode is None, log.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                assert time.monotonic() < deadline, f"no /healthz:\n{log.read_text()}"
                await asyncio.sleep(0.2)
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
                ready = await response.json()
            assert ready["state"] == "ready" and ready["rules"] == "/config/rules.yaml"
            event = example("course_completed")
            body = (EXAMPLES / "course_completed.json").read_bytes()
            async with http.post(
                f"{base}/events", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 202, await response.text()
            # The example rules' audit channel forwards the raw event, signed.
            [got] = await receiver.wait_for(1, timeout=30)
            assert got.body == event
        assert await run_healthcheck(buildah, container, image, port) == 0

        pid = router_process(proc.pid)
        assert pid is not None, "no router process under buildah run"
        assert process_uid(pid) == uid != 0
        assert (data / "router.db").exists()
        # buildah run does not forward SIGTERM (it kills its child): signal the router.
        os.kill(pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert "draining: no new events accepted" in messages
    assert messages[-1] == "stopped"
    assert SECRET not in log.read_text()
    assert await run_healthcheck(buildah, container, image, port) != 0
