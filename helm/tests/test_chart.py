"""The Helm chart in helm/deputy, rendered and linted by the real Helm engine (Helm's Go SDK,
bundled by helm-python-sdk) and checked against the Kubernetes API schemas
(kubernetes-validate), for each values file in helm/tests/values/.

The rendered deputy container is also run for real: its arguments, with the in-pod paths
mapped to temporary directories, start the deputy binary on the bundle the ConfigMap would
mount, and /readyz and /healthz must answer 200.

Run: scripts/setup && .venv/bin/python3 -m pytest -q helm/tests
(`cargo test --locked` runs it through tests/it/helm.rs, which also passes DEPUTY_BIN).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

TESTS = pathlib.Path(__file__).resolve().parent
CHART = TESTS.parent / "deputy"
REPO = TESTS.parent.parent
VALUES = TESTS / "values"
RELEASE = "demo"
NAMESPACE = "agents"
FULLNAME = "demo-deputy"
# The oldest Kubernetes minor still widely run, and the newest that kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
BUNDLE_DIRS = ("schema", "policies", "entities")

VALUES_FILES = sorted(p.name for p in VALUES.glob("*.yaml"))


# --- helpers -------------------------------------------------------------------------------


def load_values(name: str) -> dict[str, Any]:
    # Helm's own YAML parsing, as `helm install -f FILE` does it.
    return helm.values_from_yaml((VALUES / name).read_text())


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders, in template order."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                objects.append(doc)
    return objects


def render_file(name: str) -> list[dict[str, Any]]:
    return render(load_values(name))


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(objects)["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name!r}"
    return found[0]


def flag(args: list[str], name: str) -> str:
    """The value after `name` in a container's args."""
    assert name in args, f"{name} missing from {args}"
    i = args.index(name)
    assert i + 1 < len(args), f"{name} has no value in {args}"
    return args[i + 1]


def volume(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [v for v in pod_spec(objects)["volumes"] if v["name"] == name]
    assert len(found) == 1, f"no volume {name!r}"
    return found[0]


def mount(c: dict[str, Any], path: str) -> dict[str, Any]:
    found = [m for m in c.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(found) == 1, f"container {c['name']} mounts nothing at {path}"
    return found[0]


def env(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def deputy_bin() -> pathlib.Path | None:
    given = os.environ.get("DEPUTY_BIN")
    if given:
        return pathlib.Path(given)
    built = REPO / "target" / "debug" / "deputy"
    return built if built.exists() else None


def materialize_configmap_bundle(objects: list[dict[str, Any]], into: pathlib.Path) -> None:
    """Lays the ConfigMap out as the kubelet would, following the volume's `items`."""
    data = one(objects, "ConfigMap")["data"]
    for item in volume(objects, "bundle")["configMap"]["items"]:
        target = into / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])


# --- the engine: lint, render, schemas ----------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_lints_clean(values_file: str) -> None:
    report = helm.lint(
        CHART, load_values(values_file), strict=True, namespace=NAMESPACE, kube_version="v1.30.0"
    )
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], json.dumps(report, indent=2)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_manifests_match_kubernetes_schemas(values_file: str, kube_version: str) -> None:
    objects = render_file(values_file)
    assert objects
    for obj in objects:
        # strict: unknown fields (a misspelt key, a field at the wrong level) fail too.
        kubernetes_validate.validate(obj, kube_version, strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_values_files_cover_the_modes() -> None:
    assert {"default.yaml", "git-sync.yaml", "pvc-state.yaml", "otel.yaml", "http-probes.yaml"} <= set(
        VALUES_FILES
    )


# --- the sidecar: loopback, probes, hardening ---------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_container_is_hardened(values_file: str) -> None:
    objects = render_file(values_file)
    spec = pod_spec(objects)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID")
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["runAsUser"] != 0, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in sc["capabilities"], c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]


def test_default_listens_on_loopback_with_exec_probes() -> None:
    objects = render_file("default.yaml")
    deputy = container(objects, "deputy")
    args = deputy["args"]
    assert args[0] == "serve"
    assert flag(args, "--listen") == "127.0.0.1:8180"
    assert "--allow-remote" not in args
    assert "ports" not in deputy, "a loopback-only sidecar declares no container port"
    probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        # The kubelet probes the pod IP, never loopback: the probe runs inside the container.
        assert "httpGet" not in deputy[probe]
        assert deputy[probe]["exec"]["command"] == [
            "deputy",
            "probe",
            "--url",
            f"http://127.0.0.1:8180{path}",
        ]
        assert deputy[probe]["timeoutSeconds"] >= 1
    assert "NetworkPolicy" not in kinds(objects)
    agent_env = env(container(objects, "agent"))
    assert agent_env["DEPUTY_URL"]["value"] == "http://127.0.0.1:8180"


def test_http_probes_open_the_port_only_behind_a_network_policy() -> None:
    objects = render_file("http-probes.yaml")
    deputy = container(objects, "deputy")
    assert flag(deputy["args"], "--listen") == "0.0.0.0:8180"
    assert "--allow-remote" in deputy["args"]
    assert deputy["ports"] == [{"name": "deputy", "containerPort": 8180, "protocol": "TCP"}]
    assert deputy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "deputy"}
    assert deputy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "deputy"}
    policy = one(objects, "NetworkPolicy")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # Only the agent's own port is admitted; deputy's is not.
    admitted = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert admitted == [8080]


def test_http_probes_without_ingress_rules_deny_all_ingress() -> None:
    objects = render({"probes": {"mode": "http"}})
    assert one(objects, "NetworkPolicy")["spec"]["ingress"] == []


def test_no_telemetry_env_unless_an_endpoint_is_set() -> None:
    names = env(container(render_file("default.yaml"), "deputy"))
    assert not [n for n in names if n.startswith("OTEL_")]
    assert "DEPUTY_ADMIN_TOKEN" not in names


# --- the bundle: ConfigMap and git-sync ----------------------------------------------------


def test_configmap_items_lay_out_the_bundle() -> None:
    objects = render_file("default.yaml")
    cm = one(objects, "ConfigMap")
    assert cm["metadata"]["name"] == f"{FULLNAME}-bundle"
    vol = volume(objects, "bundle")["configMap"]
    assert vol["name"] == cm["metadata"]["name"]
    paths = {item["path"] for item in vol["items"]}
    assert {p.split("/")[0] for p in paths} == set(BUNDLE_DIRS)
    assert {item["key"] for item in vol["items"]} == set(cm["data"])
    deputy = container(objects, "deputy")
    bundle_mount = mount(deputy, flag(deputy["args"], "--bundle"))
    assert bundle_mount["name"] == "bundle" and bundle_mount["readOnly"] is True
    # A subPath mount would never see the kubelet's `..data` swaps, so no hot reload.
    assert "subPath" not in bundle_mount
    assert "git-sync" not in [c["name"] for c in pod_spec(objects)["containers"]]


def test_chart_ships_the_repository_example_bundle() -> None:
    # Symlinks, which Helm follows (and `helm package` resolves), so the chart's default bundle
    # is always the example bundle at the repository root and never a stale copy.
    shipped = CHART / "files" / "bundle"
    for sub in BUNDLE_DIRS:
        assert (shipped / sub).is_symlink(), f"helm/deputy/files/bundle/{sub} should link to {sub}/"
        assert (shipped / sub).resolve() == (REPO / sub).resolve()


def test_configmap_carries_files_byte_for_byte(tmp_path: pathlib.Path) -> None:
    objects = render_file("default.yaml")
    materialize_configmap_bundle(objects, tmp_path)
    for sub in BUNDLE_DIRS:
        for src in (REPO / sub).rglob("*"):
            if src.is_file():
                rel = src.relative_to(REPO)
                assert (tmp_path / rel).read_bytes() == src.read_bytes(), rel


def test_inline_bundle_files_and_revision() -> None:
    files = {
        "schema/app.cedarschema": "entity User; entity Doc; action view appliesTo { principal: User, resource: Doc };\n",
        "policies/team/a.cedar": 'permit(principal, action == Action::"view", resource);\n',
        "entities/users.json": "[]\n",
    }
    objects = render({"bundle": {"files": files, "revision": "0123abc"}, "deputy": {"authorizeOnly": True}})
    cm = one(objects, "ConfigMap")
    items = {i["path"]: i["key"] for i in volume(objects, "bundle")["configMap"]["items"]}
    assert set(items) == set(files) | {"REVISION"}
    for path, content in files.items():
        assert cm["data"][items[path]] == content
    assert cm["data"][items["REVISION"]] == "0123abc\n"
    assert "--authorize-only" in container(objects, "deputy")["args"]


@pytest.mark.parametrize(
    "path", ["policies/../x.cedar", "policies/.hidden.cedar", "x.cedar", "schema/a/b.cedarschema"]
)
def test_bad_bundle_paths_are_refused(path: str) -> None:
    with pytest.raises(helm.HelmError, match="is not a bundle file"):
        render({"bundle": {"files": {path: "x"}}})


def test_git_sync_mounts_the_link_as_the_bundle() -> None:
    objects = render_file("git-sync.yaml")
    spec = pod_spec(objects)
    assert "ConfigMap" not in kinds(objects)
    sync = container(objects, "git-sync")
    assert sync["image"].startswith("registry.k8s.io/git-sync/git-sync:v4.")
    args = sync["args"]
    assert "--repo=https://git.example.com/platform/agent-policies.git" in args
    assert "--ref=main" in args and "--root=/git" in args and "--link=bundle" in args
    assert "--period=15s" in args
    deputy = container(objects, "deputy")
    # deputy serves the link (plus the bundle's directory in the repository), so that each
    # swap of the link by git-sync is a new bundle.
    assert flag(deputy["args"], "--bundle") == "/git/bundle/deploy/bundle"
    git_volume = volume(objects, "git")
    assert git_volume["emptyDir"] == {}
    deputy_mount = mount(deputy, "/git")
    assert deputy_mount["name"] == "git" and deputy_mount["readOnly"] is True
    sync_mount = mount(sync, "/git")
    assert sync_mount["name"] == "git" and not sync_mount.get("readOnly")
    # git-sync's HOME (/tmp) must be writable under a read-only root filesystem.
    assert mount(sync, "/tmp")["name"] == "git-sync-tmp"
    creds = env(sync)
    for var, key in [("GITSYNC_USERNAME", "username"), ("GITSYNC_PASSWORD", "password")]:
        assert creds[var]["valueFrom"]["secretKeyRef"] == {"name": "agent-policies-git", "key": key}
    assert "bundle" not in [v["name"] for v in spec["volumes"]]


def test_git_sync_at_the_repository_root() -> None:
    objects = render({"bundle": {"source": "gitSync"}, "gitSync": {"repo": "https://git.example.com/p.git"}})
    assert flag(container(objects, "deputy")["args"], "--bundle") == "/git/bundle"


def test_git_sync_needs_a_repository() -> None:
    with pytest.raises(helm.HelmError, match="gitSync.repo is empty"):
        render({"bundle": {"source": "gitSync"}})


# --- state, admin token, telemetry ---------------------------------------------------------


def test_state_on_an_empty_dir_by_default() -> None:
    objects = render_file("default.yaml")
    deputy = container(objects, "deputy")
    state = flag(deputy["args"], "--state")
    assert mount(deputy, state)["name"] == "state"
    assert "emptyDir" in volume(objects, "state")
    assert "PersistentVolumeClaim" not in kinds(objects)


def test_state_on_a_claim() -> None:
    objects = render_file("pvc-state.yaml")
    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "fast-ssd"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert volume(objects, "state")["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    deputy = container(objects, "deputy")
    assert mount(deputy, flag(deputy["args"], "--state"))["name"] == "state"
    # The old and the new pod cannot both attach a ReadWriteOnce volume.
    assert one(objects, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_state_on_an_existing_claim() -> None:
    objects = render({"state": {"persistence": {"enabled": True, "existingClaim": "agent-state"}}})
    assert "PersistentVolumeClaim" not in kinds(objects)
    assert volume(objects, "state")["persistentVolumeClaim"]["claimName"] == "agent-state"


def test_persistent_state_refuses_several_replicas() -> None:
    with pytest.raises(helm.HelmError, match="needs replicaCount 1"):
        render({"replicaCount": 2, "state": {"persistence": {"enabled": True}}})


def test_admin_token_from_an_existing_secret() -> None:
    objects = render_file("otel.yaml")
    assert "Secret" not in kinds(objects), "the chart must not create a Secret it was given"
    deputy = container(objects, "deputy")
    token_file = flag(deputy["args"], "--admin-token-file")
    assert token_file == "/var/run/secrets/deputy/token"
    m = mount(deputy, "/var/run/secrets/deputy")
    assert m["readOnly"] is True
    secret = volume(objects, m["name"])["secret"]
    assert secret["secretName"] == "deputy-admin"
    assert secret["items"] == [{"key": "token", "path": "token"}]
    # Readable by deputy's group (the pod's fsGroup), by no one else.
    assert secret["defaultMode"] == 0o440
    assert pod_spec(objects)["securityContext"]["fsGroup"] == deputy["securityContext"]["runAsGroup"]
    assert "DEPUTY_ADMIN_TOKEN" not in env(deputy)


def test_admin_token_value_becomes_a_secret() -> None:
    objects = render_file("pvc-state.yaml")
    secret = one(objects, "Secret")
    assert secret["metadata"]["name"] == f"{FULLNAME}-admin-token"
    token = base64.b64decode(secret["data"]["admin-token"]).decode()
    assert token == "demo-admin-token-0123456789"
    deputy = container(objects, "deputy")
    assert flag(deputy["args"], "--admin-token-file") == "/var/run/secrets/deputy/admin-token"
    assert volume(objects, "admin-token")["secret"]["secretName"] == secret["metadata"]["name"]
    # The token is in no container's spec, only in the Secret.
    assert "demo-admin-token" not in json.dumps(one(objects, "Deployment"))


def test_no_admin_token_by_default() -> None:
    objects = render_file("default.yaml")
    assert "Secret" not in kinds(objects)
    assert "--admin-token-file" not in container(objects, "deputy")["args"]


def test_short_admin_token_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="adminToken"):
        render({"adminToken": {"value": "short"}})


def test_otlp_endpoint_and_log_settings() -> None:
    deputy = container(render_file("otel.yaml"), "deputy")
    e = env(deputy)
    assert e["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability.svc:4318"
    assert e["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
    assert e["OTEL_SERVICE_NAME"]["value"] == "coder-agent-deputy"
    assert "k8s.pod.name=$(POD_NAME)" in e["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    # $(POD_NAME) only expands if POD_NAME is defined earlier in the list.
    names = [x["name"] for x in deputy["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert e["DEPUTY_LOG"]["value"] == "deputy=debug"
    assert flag(deputy["args"], "--log-format") == "text"
    assert flag(container(render_file("default.yaml"), "deputy")["args"], "--log-format") == "json"


@pytest.mark.parametrize(
    "values,message",
    [
        ({"deputy": {"logFormat": "xml"}}, "logFormat"),
        ({"probes": {"mode": "tcp"}}, "probes/mode"),
        ({"bundle": {"source": "s3"}}, "bundle/source"),
        ({"deputy": {"port": 70000}}, "deputy/port"),
    ],
)
def test_values_schema_rejects_nonsense(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# --- the rendered container, run for real --------------------------------------------------


needs_deputy = pytest.mark.skipif(
    deputy_bin() is None, reason="no deputy binary: set DEPUTY_BIN or run `cargo build` (cargo test sets it)"
)


@needs_deputy
def test_deputy_accepts_the_configmap_bundle(tmp_path: pathlib.Path) -> None:
    materialize_configmap_bundle(render_file("default.yaml"), tmp_path)
    run = subprocess.run(
        [str(deputy_bin()), "validate", "--bundle", str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


class RunningDeputy:
    """The deputy binary started with a rendered container's arguments and env."""

    def __init__(self, deputy: dict[str, Any], args: list[str]) -> None:
        args = list(args)
        args[args.index("--listen") + 1] = "127.0.0.1:0"
        args[args.index("--log-format") + 1] = "json"  # to read the bound address from the log
        self.cmd = [str(deputy_bin()), *args]
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DEPUTY_"))}
        for e in deputy.get("env", []):
            if "value" in e and not e["name"].startswith("OTEL_"):
                child_env[e["name"]] = e["value"]
        self.log: list[str] = []
        self._addr: list[str] = []
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        deadline = time.monotonic() + 30
        while not self._addr and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self._addr:
            self.stop()
            pytest.fail(f"deputy did not start: {' '.join(self.cmd)}\n{self.logs()}")
        self.addr = self._addr[0]

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "deputy listening" and not self._addr:
                self._addr.append(event["addr"])

    def logs(self) -> str:
        return "".join(self.log)

    def request(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.addr}{path}", data=data)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_for(self, what: str, check: Any, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        pytest.fail(f"deputy never {what}\n{self.logs()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> RunningDeputy:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def ok(d: RunningDeputy, path: str) -> bool:
    return d.request(path)[0] == 200


@needs_deputy
@pytest.mark.parametrize("values_file", ["default.yaml", "pvc-state.yaml", "otel.yaml"])
def test_rendered_deputy_container_serves_ready(values_file: str, tmp_path: pathlib.Path) -> None:
    """The rendered command line, with in-pod paths mapped to temporary directories, starts the
    real binary, which reports ready on the ConfigMap's bundle."""
    objects = render_file(values_file)
    deputy = container(objects, "deputy")
    bundle, state, secrets = tmp_path / "bundle", tmp_path / "state", tmp_path / "secrets"
    for d in (bundle, state, secrets):
        d.mkdir()
    materialize_configmap_bundle(objects, bundle)
    args = deputy["args"]
    remap = {flag(args, "--bundle"): bundle, flag(args, "--state"): state}
    if "--admin-token-file" in args:
        (secrets / "token").write_text("a-test-admin-token-0123456789\n")
        remap[flag(args, "--admin-token-file")] = secrets / "token"
    with RunningDeputy(deputy, [str(remap.get(a, a)) for a in args]) as d:
        d.wait_for("became live", lambda: ok(d, "/healthz"))
        d.wait_for("became ready", lambda: ok(d, "/readyz"))


READ_MAIN_RS = {
    "principal": {"type": "Agent", "id": "coder-1"},
    "action": {"type": "Action", "id": "read"},
    "resource": {"type": "File", "id": "repo/src/main.rs"},
}
FREEZE = '@id("freeze-src")\nforbid (principal is Agent, action, resource in Folder::"repo/src");\n'


def git_sync_worktree(root: pathlib.Path, sha: str, sub: str, extra_policy: str | None) -> None:
    """A worktree as git-sync lays it out: <root>/.worktrees/<sha>, the bundle at <sub>."""
    bundle = root / ".worktrees" / sha / sub
    bundle.mkdir(parents=True)
    for d in BUNDLE_DIRS:
        shutil.copytree(REPO / d, bundle / d)
    if extra_policy:
        (bundle / "policies" / "freeze.cedar").write_text(extra_policy)


def git_sync_publish(root: pathlib.Path, link: str, sha: str) -> None:
    """Points the link at a worktree the way git-sync does: a new symlink renamed over it."""
    tmp = root / f".{link}.tmp"
    os.symlink(f".worktrees/{sha}", tmp)
    os.replace(tmp, root / link)


@needs_deputy
def test_git_sync_layout_serves_and_reloads(tmp_path: pathlib.Path) -> None:
    """The --bundle path the chart computes, over git-sync's layout: deputy is ready on the
    first commit, and a new commit published by a link swap changes its decisions."""
    values = load_values("git-sync.yaml")
    sub = values["gitSync"]["subPath"]
    objects = render(deep_merge(values, {"deputy": {"pollIntervalSecs": 1}}))
    deputy = container(objects, "deputy")
    sync = container(objects, "git-sync")
    # What git-sync is told (its root and link) and what deputy is told (--bundle) must meet.
    sync_args = dict(a[2:].split("=", 1) for a in sync["args"] if a.startswith("--") and "=" in a)
    pod_root = sync_args["root"]
    assert mount(deputy, pod_root)["name"] == mount(sync, pod_root)["name"]
    bundle_in_pod = flag(deputy["args"], "--bundle")
    assert bundle_in_pod.startswith(pod_root + "/")

    root, state = tmp_path / "git", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    git_sync_worktree(root, "1" * 40, sub, None)
    git_sync_publish(root, sync_args["link"], "1" * 40)
    remap = {bundle_in_pod: str(root) + bundle_in_pod[len(pod_root) :], flag(deputy["args"], "--state"): state}
    with RunningDeputy(deputy, [str(remap.get(a, a)) for a in deputy["args"]]) as d:
        d.wait_for("became ready", lambda: ok(d, "/readyz"))
        status, first = d.request("/v1/authorize", READ_MAIN_RS)
        assert (status, first["decision"]) == (200, "Allow"), first

        git_sync_worktree(root, "2" * 40, str(sub), FREEZE)
        git_sync_publish(root, sync_args["link"], "2" * 40)
        d.wait_for(
            "reloaded the new commit",
            lambda: d.request("/v1/authorize", READ_MAIN_RS)[1].get("policy_version") != first["policy_version"],
        )
        status, second = d.request("/v1/authorize", READ_MAIN_RS)
        assert (status, second["decision"]) == (200, "Deny"), second


# --- the README's commands -----------------------------------------------------------------


def readme_helm_installs() -> list[list[str]]:
    """The `helm install` commands in README.md's Kubernetes section, as argument lists."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Kubernetes", 1)[1].split("\n## ", 1)[0]
    commands, current = [], ""
    for line in section.splitlines():
        if line.startswith("helm install") or current:
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(current.split())
                current = ""
    return commands


def deep_merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            deep_merge(into[k], v)
        else:
            into[k] = v
    return into


def readme_pushed_image() -> str:
    """The image README.md's container section builds and pushes."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The container image", 1)[1].split("\n## ", 1)[0]
    built = [line.split()[3] for line in section.splitlines() if line.startswith("docker build -t ")]
    pushed = [line.split()[2] for line in section.splitlines() if line.startswith("docker push ")]
    assert len(built) == 1 and built == pushed, (built, pushed)
    return pushed[0]


def test_readme_install_commands_render() -> None:
    commands = readme_helm_installs()
    assert len(commands) == 2, commands
    pushed = readme_pushed_image()
    for cmd in commands:
        assert cmd[:4] == ["helm", "install", "coder", "./helm/deputy"], cmd
        values: dict[str, Any] = {}
        for i, word in enumerate(cmd):
            if word == "--set":
                deep_merge(values, helm.parse_set_string(cmd[i + 1]))
        objects = render(values)
        for obj in objects:
            kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)
        deputy = container(objects, "deputy")
        # The chart pulls what README's container section pushes.
        assert deputy["image"] == pushed, (deputy["image"], pushed)
        assert flag(deputy["args"], "--listen") == "127.0.0.1:8180"
        if values.get("bundle", {}).get("source") == "gitSync":
            assert flag(deputy["args"], "--bundle") == "/git/bundle/deploy/bundle"
        else:
            assert volume(objects, "admin-token")["secret"]["secretName"] == "deputy-admin"
            assert env(deputy)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http://otel-collector")


def test_packaged_chart_carries_the_bundle(tmp_path: pathlib.Path) -> None:
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        names = {f["name"] for f in packaged.files}
        manifests = packaged.render({}, name=RELEASE, namespace=NAMESPACE)
    for sub in BUNDLE_DIRS:
        for src in (REPO / sub).rglob("*"):
            if src.is_file():
                assert f"files/bundle/{src.relative_to(REPO)}" in names
    with helm.Chart.load(CHART) as chart:
        unpackaged = chart.render({}, name=RELEASE, namespace=NAMESPACE)
    key = "deputy/templates/configmap-bundle.yaml"
    assert manifests[key] == unpackaged[key]
