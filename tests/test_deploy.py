"""deploy/ and docs/container.md are kept honest: the Kubernetes manifests and every
example name the command, ports, probe paths and variables that ``router serve`` (its
click command and settings model) and the Containerfile really have, and the rules in
the ConfigMap pass ``router validate --strict``."""

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from router.cli import cli, serve
from router.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOC = ROOT / "docs" / "container.md"
README = ROOT / "README.md"
README_SECTION = "## Run it as a container / sidecar"


# -- what the router and the image say about themselves ---------------------------------


def serve_help() -> str:
    result = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def documented_variables() -> set[str]:
    """The ROUTER_* names ``router serve --help`` documents."""
    return set(re.findall(r"\bROUTER_[A-Z_]+[A-Z]\b", serve_help()))


def documented_paths() -> set[str]:
    """The HTTP paths the help's first line names (POST /events, /healthz, ...)."""
    return set(re.findall(r"(/[a-z]+)\b", serve_help().split("\n\n")[1]))


def serve_options() -> set[str]:
    command = serve
    assert isinstance(command, click.Command)
    return {opt for param in command.params for opt in param.opts}


def containerfile() -> dict[str, Any]:
    """The final stage's ENV, USER, EXPOSE, VOLUME and ENTRYPOINT."""
    text = (ROOT / "Containerfile").read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    final: dict[str, Any] = {"ENV": {}}
    for name, rest in instructions[last_from:]:
        if name == "ENV":
            final["ENV"].update(item.split("=", 1) for item in shlex.split(rest))
        elif name in ("ENTRYPOINT", "VOLUME"):
            final[name] = yaml.safe_load(rest)
        else:
            final[name] = rest
    return final


def example_rules_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "rules.yaml").read_text()))


# -- the manifests ------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]


def router_containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for container in pod.get("initContainers", []) + pod["containers"]:
        if container["name"] == "router":
            yield container


def rules_configmap() -> str:
    [configmap] = [doc for doc in manifests() if doc["kind"] == "ConfigMap"]
    return configmap["data"]["rules.yaml"]


def effective_env(container: dict[str, Any]) -> dict[str, str]:
    """The image's ENV with the container's literal values on top."""
    env = dict(containerfile()["ENV"])
    env.update({e["name"]: e.get("value", "<from secret>") for e in container.get("env", [])})
    return env


def check_router_pod(workload: dict[str, Any], secrets: dict[str, set[str]], rules: str) -> None:
    pod = workload["spec"]["template"]["spec"]
    [container] = router_containers(pod)
    image = containerfile()
    # The command: the image's entrypoint, with only `router serve` options after it.
    assert container.get("command", image["ENTRYPOINT"]) == image["ENTRYPOINT"]
    assert image["ENTRYPOINT"] == ["router", "serve"]
    for arg in container.get("args", []):
        assert arg.split("=", 1)[0] in serve_options(), arg
    env = effective_env(container)
    # Every ROUTER_* variable is a setting that `router serve --help` documents.
    names = [e["name"] for e in container.get("env", [])]
    for name in names:
        if name.startswith("ROUTER_"):
            assert name in documented_variables(), name
            assert name.removeprefix("ROUTER_").lower() in Settings.model_fields, name
    # Every other variable is used: by the rules, by another variable, or by libpq.
    rule_vars = set(re.findall(r"\$\{([A-Z_]+)", rules))
    referenced = {
        m for e in container["env"] for m in re.findall(r"\$\((\w+)\)", e.get("value", ""))
    }
    for name in names:
        if not name.startswith("ROUTER_"):
            assert name in rule_vars | referenced | {"PGPASSWORD"}, f"{name} is not used"
    assert rule_vars <= set(names), f"the rules need {rule_vars - set(names)}"
    # Ports and probes: the port the router listens on, the paths it serves.
    [port] = container["ports"]
    assert port["containerPort"] == int(env["ROUTER_PORT"])
    assert f"{port['containerPort']}/tcp" in image["EXPOSE"] + "/tcp"
    probes = [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
    if "startupProbe" in container:  # the app waits for it: router must be ready
        probes.append(("startupProbe", "/readyz"))
    for probe, path in probes:
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in documented_paths()
        assert get["port"] in (port.get("name"), port["containerPort"])
    # A stop takes up to about twice the grace (open requests, then deliveries).
    grace = float(env.get("ROUTER_SHUTDOWN_GRACE", Settings.model_fields["shutdown_grace"].default))
    assert pod["terminationGracePeriodSeconds"] >= 2 * grace + 5
    # The image's user, non-root.
    uid = int(image["USER"].split(":")[0])
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
    # Secrets named by the pod exist with those keys.
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    for volume in pod["volumes"]:
        if "secret" in volume:
            refs += [
                {"name": volume["secret"]["secretName"], "key": item["key"]}
                for item in volume["secret"].get("items", [])
            ]
    for ref in refs:
        assert ref["key"] in secrets.get(ref["name"], set()), ref
    # The rules: a whole ConfigMap directory at /config (a subPath mount never updates).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = mounts[str(Path(env["ROUTER_RULES"]).parent)]
    assert "subPath" not in config and "configMap" in volumes[config["name"]]
    # The store: a SQLite file on a volume, or PostgreSQL with a stable replica name.
    if env["ROUTER_DB"].startswith("postgresql://"):
        assert (
            "replica=$(POD_NAME)" in env["ROUTER_DB"]
            and ":" not in env["ROUTER_DB"][13:].split("@")[0]
        ), "the password belongs in PGPASSWORD"
        [pod_name] = [e for e in container["env"] if e["name"] == "POD_NAME"]
        assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        # $(VAR) expands only variables defined before it.
        assert names.index("POD_NAME") < names.index("ROUTER_DB")
        assert workload["kind"] == "StatefulSet"
    else:
        data = mounts[str(Path(env["ROUTER_DB"]).parent)]
        assert {"persistentVolumeClaim", "emptyDir"} & set(volumes[data["name"]])
        assert workload["spec"]["replicas"] == 1


def secrets_of(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    return {
        doc["metadata"]["name"]: set(doc.get("stringData", {})) | set(doc.get("data", {}))
        for doc in docs
        if doc["kind"] == "Secret"
    }


def test_every_router_workload_matches_router_serve() -> None:
    docs = manifests()
    assert len(workloads(docs)) == 2
    for workload in workloads(docs):
        check_router_pod(workload, secrets_of(docs), rules_configmap())


def test_the_image_labels_the_package_version_by_default() -> None:
    text = (ROOT / "Containerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"\nARG VERSION={project['version']}\n" in text
    assert f'org.opencontainers.image.licenses="{project["license"]}"' in text


def test_the_sidecar_is_native() -> None:
    [deployment] = [d for d in workloads(manifests()) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [router] = pod["initContainers"]
    assert router["name"] == "router" and router["restartPolicy"] == "Always"
    assert router["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert [c["name"] for c in pod["containers"]] == ["app"]
    [app] = pod["containers"]
    port = router["ports"][0]["containerPort"]
    assert {"name": "EVENTS_URL", "value": f"http://127.0.0.1:{port}/events"} in app["env"]


def test_the_postgresql_variant_runs_several_replicas() -> None:
    [statefulset] = [d for d in workloads(manifests()) if d["kind"] == "StatefulSet"]
    assert statefulset["spec"]["replicas"] > 1
    [service] = [d for d in manifests() if d["kind"] == "Service"]
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]


def test_the_configmap_rules_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = rules_configmap()
    # Secret files mounted under /run/secrets/router: stand-ins in tmp_path.
    for path in set(re.findall(r"/run/secrets/router/[\w-]+", rules)):
        (tmp_path / Path(path).name).write_text("s3cret\n")
    rules = rules.replace("/run/secrets/router/", f"{tmp_path}/")
    for name in re.findall(r"\$\{([A-Z_]+)", rules):
        monkeypatch.setenv(name, "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZg==" if "SECRET" in name else "x")
    (tmp_path / "rules.yaml").write_text(rules)
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "rules.yaml"), "--strict"])
    assert result.exit_code == 0, result.output


# -- the examples in docs/container.md and README ---------------------------------------


def code_blocks(text: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def readme_section() -> str:
    text = README.read_text()
    start = text.index(f"\n{README_SECTION}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def examples(language: str) -> list[str]:
    blocks = code_blocks(DOC.read_text()) + code_blocks(readme_section())
    return [code for lang, code in blocks if lang == language]


def commands(script: str) -> list[list[str]]:
    joined = re.sub(r"\\\n", " ", script)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def check_command(argv: list[str], tags: set[str]) -> None:
    """One command of a shell example: the tools and flags it uses name real things."""
    image = containerfile()
    tool, verb, *rest = argv
    if tool == "kubectl":
        assert verb == "apply"
        for i, arg in enumerate(rest):
            if rest[i - 1] == "-f":
                assert (ROOT / arg).is_file() or (KUBERNETES / arg).is_file(), arg
    elif verb in ("bud", "build"):
        assert tool in ("buildah", "docker", "podman")
        assert rest[rest.index("-f") + 1] == "Containerfile" and rest[-1] == "."
        for i, arg in enumerate(rest):
            if arg == "--build-arg":
                name = rest[i + 1].split("=")[0]
                assert re.search(rf"^ARG {name}\b", (ROOT / "Containerfile").read_text(), re.M)
        tags.add(rest[rest.index("-t") + 1])
    elif verb == "run":
        assert tool in ("docker", "podman")
        options, i = rest, 0
        while options[i].startswith("-"):
            flag, value = options[i], options[i + 1] if i + 1 < len(options) else ""
            if flag in ("-p", "--publish"):
                assert value.rsplit(":", 1)[1] == image["EXPOSE"], value
            elif flag in ("-v", "--volume"):
                target = value.split(":")[1]
                assert target in image["VOLUME"] + ["/config"] or target.startswith("/run/secrets")
            elif flag in ("-e", "--env"):
                name = value.split("=")[0]
                assert name in documented_variables() | example_rules_variables(), name
            elif flag == "--stop-timeout":
                assert int(value) >= 2 * float(image["ENV"]["ROUTER_SHUTDOWN_GRACE"]) + 2
            i += 1 if flag in ("-d", "--rm") else 2
        assert options[i] in tags, f"{options[i]}: not an image built above"
        for arg in options[i + 1 :]:  # arguments after the image go to `router serve`
            assert arg.split("=")[0] in serve_options() or not arg.startswith("-"), arg
    else:
        raise AssertionError(f"an example command the tests do not check: {argv}")


def test_shell_examples_name_real_things() -> None:
    scripts = examples("sh")
    assert scripts, "docs/container.md has shell examples"
    tags: set[str] = set()
    for script in scripts:
        for argv in commands(script):
            check_command(argv, tags)


def test_yaml_examples_are_checked_like_the_manifests() -> None:
    docs = [doc for code in examples("yaml") for doc in yaml.safe_load_all(code) if doc]
    assert any(doc["kind"] == "Deployment" for doc in docs)
    secrets = secrets_of(manifests())
    for workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        check_router_pod(workload, secrets, rules_configmap())
        # The classic form: router among the containers (Kubernetes before 1.29).
        assert "router" in [c["name"] for c in pod["containers"]]
