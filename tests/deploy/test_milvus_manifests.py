"""deploy/k8s/milvus, checked offline: the ConfigMap and the Deployments as the overlay patches them
(env merged by name, args replaced) against the Kubernetes schema; the Milvus custom resource's shape
(the operator's CRD is not in the Kubernetes schema); every param the deployer's args set exists and is
valid, and the token reaches the process under the name params expects."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from fashionrec.core.config import Params, set_dotted
from fashionrec.core.settings import ParamsTree, check

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
BASE = ROOT / PARAMS["k8s"]["manifests"]
OVERLAY = BASE / "milvus"
VERSION = str(PARAMS["k8s"]["version"])


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def patched(base_file: str, patch_file: str) -> dict[str, Any]:
    """A strategic merge of the patch's one container onto the base Deployment's (env by name)."""
    out = copy.deepcopy(load(BASE / base_file))
    (patch,) = load(OVERLAY / patch_file)["spec"]["template"]["spec"]["containers"]
    (container,) = out["spec"]["template"]["spec"]["containers"]
    assert patch["name"] == container["name"]
    if "args" in patch:
        container["args"] = patch["args"]
    env = {e["name"]: e for e in container.get("env", [])}
    env.update({e["name"]: e for e in patch.get("env", [])})
    container["env"] = list(env.values())
    return out


def test_kustomization_lists_the_overlay() -> None:
    kustomization = load(OVERLAY / "kustomization.yaml")
    files = {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}
    listed = set(kustomization["resources"]) | {p["path"] for p in kustomization["patches"]}
    assert "../" in listed and listed - {"../"} == files


def test_configmap_and_patched_deployments_are_valid() -> None:
    kubernetes_validate.validate(load(OVERLAY / "milvus-configmap.yaml"), VERSION, strict=True)
    for base, patch in (("deployer-deployment.yaml", "deployer-milvus-patch.yaml"),
                        ("serve-deployment.yaml", "serve-milvus-patch.yaml")):
        kubernetes_validate.validate(patched(base, patch), VERSION, strict=True)


def test_milvus_resource_is_a_cluster_with_authorization() -> None:
    cr = load(OVERLAY / "milvus-cluster.yaml")
    assert (cr["apiVersion"], cr["kind"]) == ("milvus.io/v1beta1", "Milvus")
    assert cr["spec"]["mode"] == "cluster"
    assert cr["spec"]["config"]["common"]["security"]["authorizationEnabled"] is True
    assert cr["spec"]["components"]["queryNode"]["replicas"] >= 2
    uri = load(OVERLAY / "milvus-configmap.yaml")["data"]["uri"]
    assert uri == f"http://{cr['metadata']['name']}-milvus:19530"   # the operator's proxy Service


def test_deployer_args_set_valid_params_and_the_token_is_where_params_read_it() -> None:
    deployer = patched("deployer-deployment.yaml", "deployer-milvus-patch.yaml")
    (c,) = deployer["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    sets = [c["args"][i + 1] for i, a in enumerate(c["args"]) if a == "-s"]
    tree = copy.deepcopy(PARAMS)
    for item in sets:
        key, value = item.split("=", 1)
        for var in re.findall(r"\$\((\w+)\)", value):   # Kubernetes expands $(VAR) from the container env
            assert var in env, var
            value = value.replace(f"$({var})", "http://milvus.example:19530")
        set_dotted(tree, key, yaml.safe_load(value))
    check(ParamsTree, tree)   # unknown keys or bad values fail here
    assert Params(tree=tree, root=ROOT).get("index.kind") == "milvus"
    token_env = PARAMS["index"]["milvus"]["token_env"]
    serve = patched("serve-deployment.yaml", "serve-milvus-patch.yaml")
    for container in (c, serve["spec"]["template"]["spec"]["containers"][0]):
        ref = {e["name"]: e for e in container["env"]}[token_env]["valueFrom"]["secretKeyRef"]
        readme = (BASE / "README.md").read_text()
        assert f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}=" in readme
