"""Checks of what deploys sfzb-host: the OCI image, the Kubernetes manifests, the wheel, the
Databricks bundle and the flattening pipeline. Run from the repository root after
`cargo build --release` (or `cargo test --release`), as root, with the tools `.ci/run`
installs: `python3 -m pytest deploy/tests`.

The binary is $SFZB_HOST_BIN, else $CARGO_TARGET_DIR/release/sfzb-host, else
target/release/sfzb-host.
"""

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
BUNDLE = DEPLOY / "databricks"


def binary_path():
    if os.environ.get("SFZB_HOST_BIN"):
        return Path(os.environ["SFZB_HOST_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "sfzb-host"


@pytest.fixture(scope="session")
def binary():
    path = binary_path()
    assert path.exists(), f"build sfzb-host first (cargo build --release): {path} is missing"
    return path


def run(args, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run([str(a) for a in args], **kwargs)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def version(binary):
    return run([binary, "--version"]).stdout.strip()


# Kubernetes


def kustomize(path):
    return [d for d in yaml.safe_load_all(run(["kubectl", "kustomize", path]).stdout) if d]


def find(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("kustomization", ["base", "overlays/example"])
@pytest.mark.parametrize("kubernetes", ["1.33.0", "1.37.0"])
def test_manifests_validate_strictly(tmp_path, kustomization, kubernetes):
    built = tmp_path / "built.yaml"
    built.write_text(run(["kubectl", "kustomize", K8S / kustomization]).stdout)
    result = run(["kubernetes-validate", "--strict", "-k", kubernetes, built])
    assert "passed for resource statefulset/sfzb-host" in result.stdout + result.stderr


def container(docs):
    (statefulset,) = find(docs, "StatefulSet")
    (main,) = statefulset["spec"]["template"]["spec"]["containers"]
    return statefulset, main, {e["name"]: e for e in main["env"]}


def test_every_pod_takes_its_shard_of_as_many_as_there_are_replicas():
    statefulset, _, env = container(kustomize(K8S / "overlays/example"))
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 3
    assert env["SFZB_SHARD"]["value"] == f"$(POD_INDEX)/{replicas}"
    names = [e for e in env]
    assert names.index("POD_INDEX") < names.index("SFZB_SHARD"), "$(POD_INDEX) must be defined first"
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )


def test_probes_use_the_metrics_endpoint_and_shutdown_outlasts_a_flush():
    statefulset, main, env = container(kustomize(K8S / "overlays/example"))
    host, port = env["SFZB_METRICS_LISTEN"]["value"].rsplit(":", 1)
    port = int(port)
    # Bound to the pod's address (the downward API), not every interface.
    assert host == "$(POD_IP)"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    names = [e["name"] for e in main["env"]]
    assert names.index("POD_IP") < names.index("SFZB_METRICS_LISTEN"), "defined before use"
    assert [p["containerPort"] for p in main["ports"] if p["name"] == "metrics"] == [port]
    assert "args" not in main and "command" not in main, "the image's entrypoint and command run"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["resources"]["requests"]["cpu"] and main["resources"]["limits"]["memory"]


def test_lease_fencing_comes_with_its_rbac_and_only_with_the_component():
    base = kustomize(K8S / "base")
    _, _, env = container(base)
    assert "SFZB_LEASE_NAMESPACE" not in env
    assert not find(base, "Role")
    (account,) = find(base, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False

    example = kustomize(K8S / "overlays/example")
    statefulset, _, env = container(example)
    assert env["SFZB_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["SFZB_LEASE_HOLDER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert statefulset["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    (role,) = find(example, "Role")
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
    assert sorted(rule["verbs"]) == ["create", "get", "patch"], "what Lease fencing uses, no more"
    (binding,) = find(example, "RoleBinding")
    assert binding["subjects"][0]["name"] == statefulset["spec"]["template"]["spec"]["serviceAccountName"]


SECRETS = {
    "SALESFORCE_CLIENT_ID": "id",
    "SALESFORCE_CLIENT_SECRET": "secret",
    "DATABRICKS_CLIENT_ID": "id",
    "DATABRICKS_CLIENT_SECRET": "secret",
}


def config_check(binary, args, env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SFZB_", "SALESFORCE_", "DATABRICKS_"))}
    result = run([binary, "config", "check", *args], env={**clean, **env}, cwd="/")
    return json.loads(result.stdout)


def test_the_example_overlay_config_is_one_sfzb_host_accepts(binary):
    _, _, env = container(kustomize(K8S / "overlays/example"))
    pod_env = {
        "SFZB_SHARD": "1/3",
        "SFZB_LEASE_NAMESPACE": "salesforce-ingest",
        "SFZB_LEASE_HOLDER": "sfzb-host-1",
        # As the kubelet expands it, with the pod's address.
        **{
            k: env[k]["value"].replace("$(POD_IP)", "10.1.2.3")
            for k in ("SFZB_METRICS_LISTEN", "SFZB_STATE_DIR", "SFZB_LOG_FORMAT")
        },
        **SECRETS,
    }
    plan = config_check(binary, [K8S / "overlays/example/sfzb.toml"], pod_env)
    assert plan["shard"] == "1/3"
    assert plan["metrics-listen"] == "10.1.2.3:9464"
    assert plan["lease"]["namespace"] == "salesforce-ingest"
    assert len(plan["subscriptions"]) == 4
    # Named by who logs in where (the client id at the instance), not by the entry's name.
    assert all(
        s["lease"].startswith("sfzb-id-yourdomain-my-salesforce-com-") for s in plan["subscriptions"]
    )


# OCI image


def blob(layout, digest):
    algorithm, hexdigest = digest.split(":")
    return (layout / "blobs" / algorithm / hexdigest).read_bytes()


def image_manifest(layout):
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    return entry, json.loads(blob(layout, entry["digest"]))


@pytest.fixture(scope="session")
def image(binary, tmp_path_factory):
    out = tmp_path_factory.mktemp("image") / "oci"
    run([DEPLOY / "image/build.sh", "--binary", binary, "--out", out, "--tag", "test"])
    return out


def test_image_runs_the_binary_as_a_non_root_user(image, binary, tmp_path):
    entry, manifest = image_manifest(image)
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "test"
    config = json.loads(blob(image, manifest["config"]["digest"]))
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/sfzb-host"]
    assert config["config"]["Cmd"] == ["run"], "the StatefulSet relies on it"
    assert config["config"]["User"] == "65532:65532"
    assert config["os"] == "linux" and config["architecture"] == "amd64"

    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--image", f"{image}:test", bundle])
    rootfs = bundle / "rootfs"
    sections = run(["readelf", "-S", rootfs / "usr/local/bin/sfzb-host"]).stdout
    assert ".text" in sections and ".debug_line" not in sections, "stripped of debug info"
    assert (rootfs / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 100_000
    assert not (rootfs / "bin/sh").exists() and not (rootfs / "usr/bin/sh").exists(), "no shell"

    # As a container runtime would run it: the image's user and environment, /proc mounted.
    as_user = [shutil.which("chroot"), "--userspec=65532:65532", rootfs]
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    assert run([*as_user, "/usr/local/bin/sfzb-host", "--version"], env=env).stdout.strip() == version(binary)
    # The whole product inside the image: a simulated org, Wasm transforms, Delta tables.
    run(["mount", "-t", "proc", "proc", rootfs / "proc"])
    try:
        demo = run(
            [*as_user, "/usr/local/bin/sfzb-host", "demo", "--dir", "/tmp/demo", "--events", "200"],
            env=env,
        )
    finally:
        run(["umount", rootfs / "proc"])
    assert "Cannot write the compile cache" not in demo.stderr, "the cache directory is writable"
    assert "AccountChangeEvent" in demo.stdout + demo.stderr
    assert sorted(p.name for p in (rootfs / "tmp/demo/tables").iterdir()) == [
        "account_events", "contact_events", "lead_events",
    ]


def test_image_builds_reproducibly(image, binary, tmp_path):
    again = tmp_path / "oci"
    run([DEPLOY / "image/build.sh", "--binary", binary, "--out", again, "--tag", "test"])
    assert image_manifest(again)[0]["digest"] == image_manifest(image)[0]["digest"]


# The wheel


@pytest.fixture(scope="session")
def wheel(binary, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    run(["maturin", "build", "--release", "--out", out], cwd=DEPLOY / "databricks/wheel")
    (built,) = out.glob("*.whl")
    return built


def test_wheel_carries_the_binary_for_ubuntu_22_04(wheel, binary):
    match = re.search(r"-py3-none-manylinux_2_(\d+)_x86_64\.whl$", wheel.name)
    assert match and int(match.group(1)) <= 35, wheel.name
    with zipfile.ZipFile(wheel) as archive:
        (script,) = [n for n in archive.namelist() if n.endswith(".data/scripts/sfzb-host")]
        assert archive.getinfo(script).external_attr >> 16 & 0o111, "executable"
        assert "sfzb_host/__init__.py" in archive.namelist()


def test_wheel_entry_point_runs_sfzb_host_in_a_fresh_venv(wheel, binary, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin/python"
    run([python, "-m", "pip", "install", "--no-index", "--quiet", wheel])
    # What a Databricks python_wheel_task does: find the entry point by name, call it.
    call = (
        "import sys; from importlib.metadata import entry_points;"
        "(main,) = [e for e in entry_points(group='sfzb_host') if e.name == 'main'];"
        "sys.argv = ['main', *sys.argv[1:]]; main.load()()"
    )
    ran = run([python, "-c", call, "--version"], cwd=tmp_path)
    assert ran.stdout.strip() == version(binary)
    assert run([venv / "bin/sfzb-host", "--version"]).stdout.strip() == version(binary)
    failed = subprocess.run([python, "-c", call, "--no-such-flag"], capture_output=True, text=True)
    assert failed.returncode != 0
    assert "sfzb-host exited with code 2" in failed.stderr

    # A cancelled task: SIGTERM reaches sfzb-host, which stops cleanly, and so does the task.
    served = subprocess.Popen(
        [python, "-c", call, "sim", "--port", "0", "--login-port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    assert served.stdout.readline().startswith("Pub/Sub API:"), "sfzb-host sim is up"
    served.send_signal(signal.SIGTERM)
    assert served.wait(timeout=20) == 0


# The Databricks bundle


def bundle_config():
    root = yaml.safe_load((BUNDLE / "databricks.yml").read_text())
    resources = {}
    for pattern in root["include"]:
        for path in sorted(BUNDLE.glob(pattern)):
            for kind, items in yaml.safe_load(path.read_text())["resources"].items():
                for name, item in items.items():
                    resources.setdefault(kind, {})[name] = (path, item)
    return root, resources


def test_bundle_resources_are_valid_jobs_and_pipelines():
    from databricks.bundles.jobs import Job
    from databricks.bundles.pipelines import Pipeline

    _, resources = bundle_config()
    assert set(resources) == {"jobs", "pipelines"}
    for _, job in resources["jobs"].values():
        Job.from_dict(job)
    for _, pipeline in resources["pipelines"].values():
        Pipeline.from_dict(pipeline)


def variables_used(node):
    text = json.dumps(node, default=str)
    return set(re.findall(r"\$\{var\.([a-z_]+)\}", text))


def test_bundle_job_runs_the_wheel_once_per_subscription(binary):
    root, resources = bundle_config()
    path, job = resources["jobs"]["sfzb_host"]
    assert variables_used(resources) | variables_used(root) <= set(root["variables"])

    (task,) = job["tasks"]
    each = task["for_each_task"]
    assert each["inputs"] == "{{job.parameters.subscriptions}}"
    (parameter,) = job["parameters"]
    assert parameter["default"] == "${var.subscriptions}"
    subscriptions = json.loads(root["variables"]["subscriptions"]["default"])
    assert each["concurrency"] >= len(subscriptions), "every iteration runs until cancelled"

    wheel_task = each["task"]["python_wheel_task"]
    pyproject = (BUNDLE / "wheel/pyproject.toml").read_text()
    assert wheel_task["package_name"] == re.search(r'module-name = "(\w+)"', pyproject).group(1)
    group = re.search(r"\[project\.entry-points\.(\w+)\]\n(\w+) =", pyproject)
    assert (group.group(1), group.group(2)) == (wheel_task["package_name"], wheel_task["entry_point"])
    (library,) = each["task"]["libraries"]
    artifact = root["artifacts"]["sfzb_host_wheel"]
    assert (path.parent / library["whl"]).resolve().parent == (BUNDLE / artifact["path"] / "dist").resolve()
    assert "--out dist" in artifact["build"]

    (cluster,) = job["job_clusters"]
    assert cluster["job_cluster_key"] == each["task"]["job_cluster_key"]
    new_cluster = cluster["new_cluster"]
    major, minor = map(int, new_cluster["spark_version"].split(".")[:2])
    assert (major, minor) >= (13, 0), "runtimes on Ubuntu 22.04 (glibc 2.35) or newer"
    env = new_cluster["spark_env_vars"]
    for name, value in env.items():
        if "secret" in name.lower() or name.endswith("CLIENT_ID"):
            assert re.fullmatch(r"\{\{secrets/\$\{var\.secret_scope\}/[a-z-]+\}\}", value), name
    known = set(re.findall(r"\[env: (\w+)", run([binary, "run", "--help"]).stdout))
    assert set(env) <= known | {"SFZB_CONFIG", "SFZB_CACHE_DIR"}, set(env) - known

    # Each iteration's command, as the job runs it, is one sfzb-host accepts.
    settings = {
        "SALESFORCE_INSTANCE_URL": "https://example.my.salesforce.com",
        "DATABRICKS_HOST": "https://adb-1.2.azuredatabricks.net",
        "DATABRICKS_ZEROBUS_ENDPOINT": "https://1.zerobus.westeurope.azuredatabricks.net",
        "DATABRICKS_WAREHOUSE_ID": "abc",
        "SFZB_CONFIG": str(BUNDLE / "sfzb.toml"),
        **SECRETS,
    }
    tables = []
    for subscription in subscriptions:
        args = [
            p.replace("{{input.channel}}", subscription["channel"])
            .replace("{{input.table}}", subscription["table"])
            .replace("${var.catalog}", root["variables"]["catalog"]["default"])
            .replace("${var.schema}", root["variables"]["schema"]["default"])
            for p in wheel_task["parameters"]
        ]
        assert args[0] == "run"
        plan = config_check(binary, args[1:], settings)
        (resolved,) = plan["subscriptions"]
        assert resolved["sink"].startswith("zerobus:main.salesforce.")
        assert plan["databricks"]["sql-warehouse-id"] == "abc", "checkpoints live in Databricks"
        tables.append(resolved["sink"].removeprefix("zerobus:"))

    _, pipeline = resources["pipelines"]["sfzb_flatten"]
    flat = root["variables"]["flat_tables"]["default"]
    for name in ("catalog", "schema"):
        flat = flat.replace("${var.%s}" % name, root["variables"][name]["default"])
    assert flat.split(",") == tables, "the pipeline flattens the job's tables"
    assert pipeline["configuration"]["sfzb.tables"] == "${var.flat_tables}"
    for library in pipeline["libraries"]:
        assert (path.parent / library["file"]["path"]).exists()


def test_the_current_state_pipeline_is_configured_with_what_it_reads():
    root, resources = bundle_config()
    path, pipeline = resources["pipelines"]["sfzb_current_state"]
    (library,) = pipeline["libraries"]
    source = (path.parent / library["file"]["path"]).read_text()
    read = set(re.findall(r'conf\.get\("(sfzb\.[a-z_.]+)"', source))
    assert read and set(pipeline["configuration"]) == read
    sys.path.insert(0, str(BUNDLE / "pipelines"))
    import sfzb_current_state as cs

    variables = root["variables"]
    values = {
        name: variables[re.fullmatch(r"\$\{var\.([a-z_]+)\}", value).group(1)]["default"]
        for name, value in pipeline["configuration"].items()
    }
    # The defaults are settings the pipeline accepts once tables are named.
    cs.settings("main.salesforce.Account", values["sfzb.current_state.scd_type"],
                values["sfzb.current_state.deletes"])


# The flattening pipeline


def decode(payload, writer, reader):
    import fastavro

    return fastavro.schemaless_reader(
        io.BytesIO(payload),
        fastavro.parse_schema(json.loads(writer)),
        fastavro.parse_schema(json.loads(reader)),
    )


def test_flattening_reads_every_payload_with_its_own_schema_resolved_to_the_newest(binary, tmp_path):
    """What pipelines/flatten.py does with from_avro, done with fastavro on rows sfzb-host
    wrote: two objects in one table (/data/ChangeEvents), a schema change halfway, and a mask
    that rewrote fields. The rows are the jsonl sink's, the same columns and values as the
    Delta and Zerobus sinks' (payload in base64)."""
    sys.path.insert(0, str(BUNDLE / "pipelines"))
    from sfzb_flatten import flat_table, newest_schema, writer_schemas

    sim = subprocess.Popen(
        [binary, "sim", "--port", "0", "--login-port", "0", "--entities", "Account,Contact",
         "--events", "100", "--schema-change-at", "101"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        urls = [sim.stdout.readline().split(":", 1)[1].strip() for _ in range(2)]
        run([
            binary, "run", "--pubsub-endpoint", urls[0], "--instance-url", urls[1],
            "--username", "u", "--password", "p", "--channel", "/data/ChangeEvents",
            "--sink", "jsonl:changes.jsonl", "--until-idle", "2", "--state-dir", "state",
            "--transform", REPO / "guest-transforms/prebuilt/mask.wasm",
            "--transform-config", "mask.fields=Phone", "--transform-config", "mask.mode=redact",
        ], cwd=tmp_path)
    finally:
        sim.kill()
        sim.wait()

    rows = [json.loads(line) for line in (tmp_path / "changes.jsonl").read_text().splitlines()]
    assert len(rows) == 200
    keys = [
        (r["entity_name"], r["timestamp"], r["replay_id"], r["schema_id"], r["schema_json"])
        for r in rows
    ]
    assert flat_table("main.s.changes:Contact") == ("main.s.changes", "Contact", "changes_contact_flat")
    assert flat_table("main.s.account_events") == ("main.s.account_events", None, "account_events_flat")

    masked = 0
    for entity in ("Account", "Contact"):
        mine = [r for r in rows if r["entity_name"] == entity]
        schemas = writer_schemas(keys, entity)
        assert len(schemas) == 2, f"{entity}: the schema changed once"
        newest_id, newest = newest_schema(keys, entity)
        assert newest_id == max(mine, key=lambda r: int(r["replay_id"], 16))["schema_id"]
        older = next(s for i, s in schemas if i != newest_id)
        (added,) = {f["name"] for f in json.loads(newest)["fields"]} - {
            f["name"] for f in json.loads(older)["fields"]
        }
        for row in mine:
            record = decode(base64.b64decode(row["payload_binary"]), row["schema_json"], newest)
            expected = json.loads(row["record_data_json"])
            for field, value in expected.items():
                if field != "ChangeEventHeader":
                    assert record[field] == value, (row["replay_id"], field)
            if row["schema_id"] != newest_id:
                assert record[added] is None, "a field the writer lacked reads as null"
            assert record["ChangeEventHeader"]["entityName"] == entity
            assert record["ChangeEventHeader"]["changeType"] == row["change_type"]
            masked += record.get("Phone") == "REDACTED"
    assert masked > 0, "the payload carries the masked values, not the originals"
