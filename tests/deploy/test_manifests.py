"""The Kubernetes manifests in deploy/k8s, checked offline: every object against the OpenAPI schema of the
Kubernetes release named in params.yaml (`k8s.version`, kubernetes-validate, strict: unknown fields
fail), then what the schema cannot see: selectors that match, the deployer's single-writer shape, the
NetworkPolicy, and image references that agree with params.yaml `images` everywhere they appear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
K8S = ROOT / PARAMS["k8s"]["manifests"]
IMAGES = PARAMS["images"]


def load_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every Kubernetes object in the manifests folder (not the kustomization)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


OBJECTS = load_objects()


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [o for _, o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name} in {K8S}, found {len(hits)}"
    return hits[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("name,obj", OBJECTS,
                         ids=[f"{n}:{o['kind']}/{o['metadata']['name']}" for n, o in OBJECTS])
def test_schema(name: str, obj: dict[str, Any]) -> None:
    version = str(PARAMS["k8s"]["version"])
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: "
                    f"{exc.message} at {'.'.join(str(p) for p in exc.path)}")


def test_every_expected_object_is_there() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for _, o in OBJECTS)
    assert kinds == sorted([
        ("ConfigMap", "fashionrec-mlflow"), ("PersistentVolumeClaim", "fashionrec-bundles"),
        ("PersistentVolumeClaim", "fashionrec-inventory"), ("Deployment", "fashionrec-serve"),
        ("Service", "fashionrec-serve"), ("HorizontalPodAutoscaler", "fashionrec-serve"),
        ("PodDisruptionBudget", "fashionrec-serve"), ("Deployment", "fashionrec-deployer"),
        ("Service", "fashionrec-deployer"), ("NetworkPolicy", "fashionrec-deployer-webhook"),
        ("Role", "fashionrec-trainjob-submitter"), ("RoleBinding", "fashionrec-trainjob-submitter"),
        ("ClusterRole", "fashionrec-trainer-runtimes-reader"),
        ("ClusterRoleBinding", "fashionrec-trainer-runtimes-reader")])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files), "kustomization.yaml must list every manifest"


def test_selectors_connect_serving_objects() -> None:
    serve = find("Deployment", "fashionrec-serve")
    labels = serve["spec"]["template"]["metadata"]["labels"]
    assert serve["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert find("Service", "fashionrec-serve")["spec"]["selector"].items() <= labels.items()
    pdb = find("PodDisruptionBudget", "fashionrec-serve")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = find("HorizontalPodAutoscaler", "fashionrec-serve")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "fashionrec-serve"}
    assert pdb["minAvailable"] < hpa["minReplicas"], "the PDB must leave room to drain a node"
    deployer = find("Deployment", "fashionrec-deployer")
    assert find("Service", "fashionrec-deployer")["spec"]["selector"].items() <= \
        deployer["spec"]["template"]["metadata"]["labels"].items()


def test_serving_pods_only_read_bundles_and_never_build_one() -> None:
    serve = find("Deployment", "fashionrec-serve")
    c = container(serve)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["bundles"].get("readOnly") is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "MLFLOW_TRACKING_URI" not in {e["name"] for e in c.get("env", [])}, \
        "a serving pod has no business with the registry: the deployer builds bundles"
    pod = serve["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert serve["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_bundles_volume_is_shared_read_write_many() -> None:
    assert "ReadWriteMany" in find("PersistentVolumeClaim", "fashionrec-bundles")["spec"]["accessModes"]
    claims = {}
    for name in ("fashionrec-serve", "fashionrec-deployer"):
        volumes = find("Deployment", name)["spec"]["template"]["spec"]["volumes"]
        claims[name] = {v["persistentVolumeClaim"]["claimName"] for v in volumes
                        if "persistentVolumeClaim" in v}
    assert "fashionrec-bundles" in claims["fashionrec-serve"] & claims["fashionrec-deployer"]
    assert PARAMS["kfp"]["bundles_pvc"] == "fashionrec-bundles", "the pipeline's deploy step: same claim"


def test_deployer_is_a_single_writer_with_its_webhook() -> None:
    deployer = find("Deployment", "fashionrec-deployer")
    assert deployer["spec"]["replicas"] == 1
    assert deployer["spec"]["strategy"] == {"type": "Recreate"}
    c = container(deployer)
    assert c["command"] == ["fashionrec", "deployer"]
    (port,) = c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    service_port = find("Service", "fashionrec-deployer")["spec"]["ports"][0]
    assert service_port["targetPort"] == port["name"]
    assert str(port["containerPort"]) in c["args"], "the CLI must listen where the pod says it does"
    env = {e["name"]: e for e in c["env"]}
    ref = env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]
    mlflow = PARAMS["kfp"]["mlflow"]     # the ConfigMap the pipeline's tasks read too
    assert ref["name"] == mlflow["config_map"]
    assert mlflow["config_map_env"][ref["key"]] == "MLFLOW_TRACKING_URI"
    assert find("ConfigMap", ref["name"])["data"][ref["key"]].startswith("http")
    secret_refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"]
                   if "secretKeyRef" in e.get("valueFrom", {})]
    assert secret_refs, "the webhook secret comes from a Secret"


def test_secrets_referenced_are_documented() -> None:
    """No Secret is committed; each one a pod references is created by a command in the README."""
    readme = (K8S / "README.md").read_text()
    for name in ("fashionrec-serve", "fashionrec-deployer"):
        for e in container(find("Deployment", name)).get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert f"kubectl create secret generic {ref['name']}" in readme, ref
                assert f"--from-literal={ref['key']}=" in readme, ref
    assert not [o for _, o in OBJECTS if o["kind"] == "Secret"], "secrets are created, never committed"


def test_only_mlflow_reaches_the_deployer_webhook() -> None:
    policy = find("NetworkPolicy", "fashionrec-deployer-webhook")["spec"]
    deployer = find("Deployment", "fashionrec-deployer")
    pod_labels = deployer["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]     # one peer with both selectors: MLflow's pods in MLflow's namespace (AND)
    assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"]
    config = find("ConfigMap", PARAMS["kfp"]["mlflow"]["config_map"])
    mlflow_host = config["data"]["tracking_uri"].split("//", 1)[1].split(".")
    assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == mlflow_host[1]
    (port,) = container(deployer)["ports"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port["containerPort"]}]


def test_image_references_come_from_params() -> None:
    """params.yaml `images` is the one place: manifests, kustomization, kfp.image and the compiled spec."""
    assert container(find("Deployment", "fashionrec-serve"))["image"] == IMAGES["serve"]
    assert container(find("Deployment", "fashionrec-deployer"))["image"] == IMAGES["pipeline"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    pinned = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    assert pinned == {IMAGES[k].split(":")[0]: IMAGES[k] for k in ("serve", "pipeline")}
    assert PARAMS["kfp"]["image"] == IMAGES["pipeline"]
    spec, *_platform = yaml.safe_load_all((ROOT / PARAMS["kfp"]["package"]).read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {IMAGES["pipeline"]}, \
        "pipelines/training_pipeline.yaml is stale: make pipeline-compile"


def test_the_pipeline_may_submit_and_watch_trainjobs() -> None:
    """What the kubeflow SDK calls in the train step (kfp.trainer) is granted to the account bound, and no
    more than reading elsewhere: create/get/delete trainjobs, read runtimes, read the job's pods."""
    def allowed(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
        return {verb for r in rules if group in r["apiGroups"] and resource in r["resources"]
                for verb in r["verbs"]}

    role = find("Role", "fashionrec-trainjob-submitter")["rules"]
    assert {"create", "get", "list", "watch", "delete"} <= allowed(role, "trainer.kubeflow.org", "trainjobs")
    assert allowed(role, "trainer.kubeflow.org", "trainingruntimes") == {"get", "list"}
    for resource in ("pods", "pods/log", "events"):
        assert allowed(role, "", resource) == {"get", "list", "watch"}, resource
    cluster = find("ClusterRole", "fashionrec-trainer-runtimes-reader")["rules"]
    assert allowed(cluster, "trainer.kubeflow.org", "clustertrainingruntimes") == {"get", "list"}
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in cluster)
    for kind, ref_kind, name in (("RoleBinding", "Role", "fashionrec-trainjob-submitter"),
                                 ("ClusterRoleBinding", "ClusterRole", "fashionrec-trainer-runtimes-reader")):
        binding = find(kind, name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner",
                                        "namespace": "kubeflow"}]
