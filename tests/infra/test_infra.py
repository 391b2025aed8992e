"""Static checks of infra/: every file parses and says what it is for, the cluster configs validate
against their schemas (Ray's own for `ray up`, the KubeRay subset kept in the repo), and no file in the
repository holds anything that looks like a secret."""

import copy
import json
import re
import subprocess

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
YAMLS = sorted(INFRA.rglob("*.yaml"))
JSONS = sorted(INFRA.rglob("*.json"))


def test_every_file_parses_and_opens_with_its_purpose():
    assert len(YAMLS) >= 4 and len(JSONS) >= 4
    for path in YAMLS:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), path
        head = path.read_text().splitlines()[0]
        assert head.startswith("# "), f"{path}: open with a comment saying what it is for"
        assert re.search(r"^#\s+(ray|kubectl|docker|export)\b", path.read_text(), re.M), f"{path}: name the command"
    for path in JSONS:
        data = json.loads(path.read_text())
        assert data.get("_comment") or data.get("$comment"), f"{path}: say what it is for"


def test_ray_up_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray" / "aws.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does before it launches anything
    assert config["head_node_type"] in config["available_node_types"]
    gpu = config["available_node_types"]["gpu_workers"]
    assert gpu["max_workers"] <= config["max_workers"] and gpu["min_workers"] == 0  # autoscaling from zero
    assert all("IamInstanceProfile" in t["node_config"] for t in config["available_node_types"].values())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["max_wrkers"] = 1  # a typo Ray's schema refuses
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def kuberay_schema() -> dict:
    return json.loads((INFRA / "kuberay" / "schema.json").read_text())


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_validate(name):
    manifest = yaml.safe_load((INFRA / "kuberay" / name).read_text())
    jsonschema.validate(manifest, kuberay_schema())


def test_kuberay_schema_refuses_what_the_crd_refuses():
    good = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    typo = copy.deepcopy(good)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    no_image = copy.deepcopy(good)
    del no_image["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    no_group = copy.deepcopy(good)
    del no_group["spec"]["workerGroupSpecs"][1]["groupName"]
    for bad in (typo, no_image, no_group):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, kuberay_schema())


def test_mlflow_deployment_serves_artifacts_from_s3_with_postgres_behind_basic_auth():
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    mlflow = compose["services"]["mlflow"]
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    for name in ("MLFLOW_ARTIFACTS", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name].startswith("${") and ":?" in env[name], name  # from the environment, or no start
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    # built from pinned versions, not installed at start
    assert mlflow["build"]["dockerfile"] == "infra/mlflow/Dockerfile" and "command" not in mlflow
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert "-c /opt/faceinsight/constraints.txt" in dockerfile and "Flask-WTF" in dockerfile
    serve = (INFRA / "mlflow" / "serve.sh").read_text()
    assert "--app-name basic-auth" in serve and "--serve-artifacts" in serve and "pip install" not in serve


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}\b", re.I),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password literal": re.compile(r"(?i)password\s*[:=]\s*['\"]?(?!\$\{|\$\$\{|['\"]?\s*$)[^\s'\"$]{6,}"),
    "token": re.compile(r"\b(ghp_[A-Za-z0-9]{36}|xox[baprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,})\b"),
}


def secrets_in(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def test_the_scanner_finds_planted_secrets():
    assert secrets_in("key: AKIAIOSFODNN7EXAMPLE") == ["AWS access key id"]
    assert secrets_in("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY") == ["AWS secret key"]
    assert secrets_in("POSTGRES_PASSWORD: hunter2hunter2") == ["password literal"]
    assert secrets_in("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}") == []
    assert secrets_in("-----BEGIN RSA PRIVATE KEY-----") == ["private key"]


def test_no_secret_in_any_tracked_file():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for rel in files:
        path = REPO / rel
        if rel.startswith("tests/infra/") or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{rel}: {kind}" for kind in secrets_in(text)]
    assert not found, found
