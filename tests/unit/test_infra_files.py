"""Static checks of infra/: no container engine or cluster runs here, so the files are
validated against their schemas (the compose specification; the Kubernetes API models)
and kept in step with the profile that does run here: the same DUALMEDIA_* settings,
service names, ports, queues and pins as dualmedia/settings.py and dualmedia/stack."""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dualmedia.settings import REPO_ROOT, Settings
from dualmedia.stack import Stack

INFRA = REPO_ROOT / "infra"
K8S = INFRA / "k8s"
DEFAULTS = Settings(_env_file=None)  # type: ignore[call-arg]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "airflow-values.yaml":
            continue  # Helm values, not manifests
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def settings_from(env: dict[str, str]) -> Settings:
    """Settings as a container with this environment would build them."""
    values = {}
    for key, value in env.items():
        assert key.startswith("DUALMEDIA_"), key
        values[key.removeprefix("DUALMEDIA_").lower()] = value
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def compose() -> dict:
    return load(INFRA / "compose.yaml")


def compose_env(service: str) -> dict[str, str]:
    env = compose()["services"][service]["environment"]
    # ${VAR:?message} placeholders stand for values given at `docker compose up`.
    return {k: re.sub(r"\$\{[^}]*\}", "placeholder", str(v)) for k, v in env.items()}


def configmap() -> dict[str, str]:
    return next(d for _, d in k8s_docs() if d["kind"] == "ConfigMap")["data"]


# ---- schemas --------------------------------------------------------------------------
def compose_validator() -> jsonschema.protocols.Validator:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def test_compose_file_follows_the_compose_specification() -> None:
    validator = compose_validator()
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    # The schema is strict: a misspelt key is caught, so passing means something.
    broken = copy.deepcopy(compose())
    broken["services"]["mlflow"]["comand"] = ["mlflow"]
    assert list(validator.iter_errors(broken))


def _check_k8s(data: Any, kind: str, where: str, errors: list[str]) -> None:
    """Strict check against the Kubernetes client's generated API models: unknown
    fields, wrong types and missing required fields are errors."""
    from kubernetes.client import models

    if kind.startswith(("list[", "List[")):
        if not isinstance(data, list):
            errors.append(f"{where}: expected a list")
            return
        for i, item in enumerate(data):
            _check_k8s(item, kind[5:-1], f"{where}[{i}]", errors)
        return
    if kind.startswith(("dict(", "dict[")):
        if not isinstance(data, dict):
            errors.append(f"{where}: expected a mapping")
            return
        inner = kind[5:-1].split(",", 1)[1].strip()
        for key, value in data.items():
            _check_k8s(value, inner, f"{where}.{key}", errors)
        return
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if kind in primitives:
        ok = isinstance(data, primitives[kind]) and not (kind == "int" and data is True)
        if not ok:
            errors.append(f"{where}: expected {kind}, got {data!r}")
        return
    if kind in ("object", "datetime", "date"):
        return
    cls = getattr(models, kind)
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a {kind} mapping")
        return
    by_json = {v: k for k, v in cls.attribute_map.items()}
    for key, value in data.items():
        if key not in by_json:
            errors.append(f"{where}: unknown field {key!r} of {kind}")
            continue
        _check_k8s(value, cls.openapi_types[by_json[key]], f"{where}.{key}", errors)
    try:  # required fields: the generated constructors refuse None for them
        cls(**{by_json[k]: v for k, v in data.items() if k in by_json})
    except ValueError as exc:
        errors.append(f"{where}: {exc}")


def model_of(doc: dict) -> str:
    version = doc["apiVersion"].split("/")[-1]
    return f"{version[0].upper()}{version[1:]}{doc['kind']}"


@pytest.mark.parametrize("name,doc", k8s_docs(), ids=[n for n, _ in k8s_docs()])
def test_kubernetes_manifests_follow_the_api(name: str, doc: dict) -> None:
    errors: list[str] = []
    _check_k8s(doc, model_of(doc), name, errors)
    assert errors == []


def test_the_kubernetes_check_is_strict() -> None:
    doc = copy.deepcopy(next(d for n, d in k8s_docs() if d["kind"] == "Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    doc["spec"]["replicas"] = "two"
    del doc["spec"]["selector"]
    errors: list[str] = []
    _check_k8s(doc, model_of(doc), "x", errors)
    assert len(errors) == 3, errors


# ---- in step with the profile that runs here --------------------------------------------
def _all_dualmedia_variables() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in [INFRA / "compose.yaml", INFRA / "Dockerfile", *K8S.glob("*.yaml")]:
        for name in re.findall(r"\bDUALMEDIA_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(path.name)
    return found


def test_every_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    images = {"DUALMEDIA_IMAGE", "DUALMEDIA_GPU_IMAGE"}  # compose's own, not settings
    unknown = {
        name: sorted(where)
        for name, where in _all_dualmedia_variables().items()
        if name not in images and name.removeprefix("DUALMEDIA_").lower() not in fields
    }
    assert unknown == {}


def _platform_commands() -> list[tuple[str, str, dict[str, str]]]:
    """(where, service name it runs, its DUALMEDIA_* environment) of every container
    that runs the platform image's entry point."""
    out = []
    for name, svc in compose()["services"].items():
        if "dualmedia/platform" in str(svc.get("image", "")):
            out.append((f"compose:{name}", svc["command"][0], compose_env(name)))
    cm = configmap()
    for where, doc in k8s_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            if c.get("command"):  # torchrun etc.: not a stack service
                continue
            env = dict(cm) | {e["name"]: e["value"] for e in c.get("env", [])}
            out.append((where, c["args"][0], env))
    values = load(K8S / "airflow-values.yaml")
    for component in ("apiServer", "scheduler", "dagProcessor", "triggerer", "workers"):
        block = values[component]
        assert block["command"] == ["python", "-m", "dualmedia.stack.run"], component
        env = dict(cm) | {e["name"]: e["value"] for e in block.get("env", [])}
        out.append((f"values:{component}", block["args"][0], env))
    return out


def test_containers_run_services_of_the_production_profile() -> None:
    for where, service, env in _platform_commands():
        settings = settings_from(env)
        assert settings.profile == "production", where
        names = {s.name for s in Stack(settings).services}
        assert service in names, f"{where} runs {service!r}, not one of {sorted(names)}"


def test_images_entry_point_is_the_service_runner() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["python", "-m", "dualmedia.stack.run"]' in dockerfile
    # The pinned set, the pinned torch.
    torch = next(
        line
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    assert torch in dockerfile
    assert "pip install -c constraints.txt ." in dockerfile
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, flags=re.M)) - {"pyproject.toml"}
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"Dockerfile copies missing {source}"
    # Every package the CLI loads commands from is in the image (else `dualmedia` fails).
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for target in project["entry-points"]["dualmedia.commands"].values():
        assert target.split(".")[0] in copied, f"Dockerfile lacks {target.split('.')[0]}/"


def test_ports_match_the_settings() -> None:
    s = DEFAULTS
    services = compose()["services"]
    published = {int(p.split(":")[1]) for svc in services.values() for p in svc.get("ports", [])}
    for port in (
        s.airflow_port,
        s.mlflow_port,
        s.torchserve_inference_port,
        s.torchserve_management_port,
        s.torchserve_metrics_port,
    ):
        assert port in published
    k8s_ports = {
        p["containerPort"]
        for _, d in k8s_docs()
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        for p in c.get("ports", [])
    }
    assert {s.mlflow_port, s.torchserve_inference_port, s.torchserve_metrics_port} <= k8s_ports
    assert s.airflow_worker_log_port in k8s_ports
    exposed = re.search(r"^EXPOSE (.+)$", (INFRA / "Dockerfile").read_text(), flags=re.M)
    assert exposed is not None
    assert {
        s.airflow_port,
        s.airflow_worker_log_port,
        s.airflow_trigger_log_port,
        s.mlflow_port,
        s.torchserve_inference_port,
    } <= {int(p) for p in exposed.group(1).split()}
    # The URLs the clients use name those ports.
    for env in (compose_env("mlflow"), configmap()):
        assert env["DUALMEDIA_MLFLOW_TRACKING_URI"].endswith(f":{s.mlflow_port}")
        assert env["DUALMEDIA_AIRFLOW_URL"].endswith(f":{s.airflow_port}")
        assert env["DUALMEDIA_TORCHSERVE_INFERENCE_URL"].endswith(f":{s.torchserve_inference_port}")


def test_queues_and_parallelism_match_the_settings() -> None:
    s = DEFAULTS
    for where, service, env in _platform_commands():
        if not service.startswith("airflow-worker"):
            continue
        settings = settings_from(env)
        assert settings.airflow_default_queue == s.airflow_default_queue, where
        assert settings.airflow_train_queue == s.airflow_train_queue, where
        worker = Stack(settings).service(service)
        queues = worker.command()[worker.command().index("--queues") + 1].split(",")
        assert set(queues) <= {s.airflow_default_queue, s.airflow_train_queue}, where
        if "gpu" in where:  # the GPU pool takes training only
            assert queues == [s.airflow_train_queue], where
        else:
            assert s.airflow_default_queue in queues, where
    values = load(K8S / "airflow-values.yaml")
    cm = configmap()
    workers = values["workers"]["replicas"]
    slots = values["config"]["celery"]["worker_concurrency"]
    assert int(cm["DUALMEDIA_AIRFLOW_WORKERS"]) == workers
    assert int(cm["DUALMEDIA_AIRFLOW_WORKER_CONCURRENCY"]) == slots
    assert values["config"]["core"]["parallelism"] == workers * slots
    assert values["config"]["operators"]["default_queue"] == s.airflow_default_queue
    assert values["executor"] == "CeleryExecutor"
    airflow_pin = next(
        line.split("==")[1]
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("apache-airflow==")
    )
    assert values["airflowVersion"] == airflow_pin


def test_training_job_rendezvous_is_consistent() -> None:
    docs = {d["kind"]: d for n, d in k8s_docs() if n.startswith("train-job.yaml")}
    job, service = docs["Job"], docs["Service"]
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    opt = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("--")}
    nodes = int(opt["--nnodes"])
    assert nodes == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert int(opt["--num-nodes"]) == nodes
    assert job["spec"]["completionMode"] == "Indexed"
    assert opt["--node-rank"] == "$(JOB_COMPLETION_INDEX)"
    gpus = pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(opt["--nproc-per-node"]) == int(opt["--devices"]) == int(gpus)
    host, port = opt["--rdzv-endpoint"].rsplit(":", 1)
    name = job["metadata"]["name"]
    assert host == f"{name}-0.{service['metadata']['name']}"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"] == {"job-name": name}


def test_autoscaler_targets_the_serving_deployment() -> None:
    docs = {d["kind"]: d for n, d in k8s_docs() if n.startswith("torchserve.yaml")}
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        docs["Deployment"]["metadata"]["name"],
    )
    selector = docs["Service"]["spec"]["selector"]
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
