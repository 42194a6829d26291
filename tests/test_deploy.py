"""deploy/kubernetes: the manifests configure clasp with settings that exist and hold together.

There is no YAML parser in the standard library; the manifests are plain enough that the few
facts checked here are read with regular expressions.
"""

from __future__ import annotations

import re
from pathlib import Path

from clasp.config import SETTINGS, load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
ENV_NAMES = {env for s in SETTINGS for env in s.env}


def text(name: str) -> str:
    return (DEPLOY / name).read_text()


def configmap_data() -> dict[str, str]:
    body = text("configmap.yaml").split("\ndata:\n", 1)[1]
    return dict(re.findall(r'^  ([A-Z_]+): "([^"]*)"', body, re.M))


def container_env() -> dict[str, str]:
    """Literal env values of the clasp container (secretKeyRef ones map to '<secret:KEY>')."""
    out = {}
    for name, rest in re.findall(r"^ {12}- name: ([A-Z_]+)\n((?: {14}.*\n)+)", text("deployment.yaml"), re.M):
        value = re.search(r'value: "([^"]*)"', rest)
        secret = re.search(r"key: ([A-Za-z_.]+)\}", rest)
        out[name] = value.group(1) if value else f"<secret:{secret.group(1)}>"
    return out


def test_every_clasp_variable_is_a_real_setting():
    used = set(configmap_data()) | {n for n in container_env() if n != "REDIS_PASSWORD"}
    unknown = sorted(n for n in used if n not in ENV_NAMES)
    assert not unknown, f"not clasp settings: {unknown}"
    assert {"CLASP_REDIS_URL", "CLASP_KEYS_FILE", "CLASP_HOST", "CLASP_PORT"} <= used


def test_the_manifests_make_a_valid_configuration():
    env = {**configmap_data(), **container_env(), "OPENAI_API_KEY": "sk-test", "CLASP_AUTH_API_KEY": "k" * 24}
    env["CLASP_REDIS_URL"] = env["CLASP_REDIS_URL"].replace("$(REDIS_PASSWORD)", "pw")
    env.pop("CLASP_KEYS_FILE")  # a file inside the pod
    cfg, _ = load_config([], env)
    assert cfg.host == "0.0.0.0" and cfg.port == 8080
    assert cfg.redis_url.startswith("redis://") and cfg.auth


def test_probes_and_ports_match_the_listener():
    deployment = text("deployment.yaml")
    port = container_env()["CLASP_PORT"]
    assert f"containerPort: {port}" in deployment
    assert deployment.count("httpGet: {path: /health, port: http}") == 2  # readiness and liveness
    assert "targetPort: http" in text("service.yaml")


def test_secrets_stay_in_the_secret():
    env = container_env()
    for name in ("OPENAI_API_KEY", "CLASP_AUTH_API_KEY", "REDIS_PASSWORD"):
        assert env[name] == f"<secret:{name}>"
    # the password reaches the URL by Kubernetes' $(VAR) expansion, never as a literal
    assert env["CLASP_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@clasp-redis:6379/0"
    example = text("secret.example.yaml")
    referenced = set(re.findall(r"key: ([A-Za-z_.]+)\}", text("deployment.yaml") + text("redis.yaml")))
    referenced |= set(re.findall(r"- key: ([A-Za-z_.]+)", text("deployment.yaml")))
    assert all(re.search(rf"^  {re.escape(k)}:", example, re.M) for k in referenced), referenced
    kustomization = text("kustomization.yaml")
    assert "secret.example.yaml" not in kustomization.split("resources:")[1]


def test_kustomization_lists_every_manifest():
    listed = set(re.findall(r"^  - ([a-z.]+\.yaml)$", text("kustomization.yaml"), re.M))
    present = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present
