"""``python -m pipelines.aws``: cluster file validation, the dry run, the security model, and teardown.

AWS itself is never contacted. EC2 and S3 calls go to the moto server of the
``s3_server`` fixture on 127.0.0.1 (it serves EC2 too), and the cluster is a
LocalCluster subclass injected through ``cluster_class`` in place of
dask-cloudprovider's EC2Cluster: the one stand-in here, since EC2 instances
cannot be started.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import boto3
import pytest
import s3fs
import yaml
from distributed import LocalCluster

from pipelines import aws
from pipelines.aws_config import WORKER_CLASS, load_cluster_config
from rhapso_gpu.cli import main as rhapso
from rhapso_gpu.errors import UserError
from rhapso_gpu.io.ome_zarr import container_attributes

ROOT = Path(__file__).parents[1]
SECRETS = {  # values that must never be printed
    "env": {"AWS_ACCESS_KEY_ID": "AKIAENVIRONMENT0001", "AWS_SECRET_ACCESS_KEY": "env-secret-value-0123456789",
            "AWS_SESSION_TOKEN": "env-session-token-abcdef"},
    "yaml": {"AWS_SECRET_ACCESS_KEY": "yaml-secret-value-9876543210", "MY_API_TOKEN": "yaml-api-token-xyz"},
}
CLUSTER = {
    "region": "us-east-1",
    "instance_type": "g5.xlarge",
    "n_workers": 3,
    "docker_image": "ghcr.io/example/rhapso-gpu:gpu",
    "security_group": "create",
    "allowed_cidr": "203.0.113.7/32",
    "iam_instance_profile": "rhapso-s3-read-write",
    "worker_memory": "24GB",
    "env": {"RHAPSO_S3_MAX_ATTEMPTS": "10"},
}


def write_yaml(path: Path, values) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def pipeline_file(tmp_path: Path, xml: str, output: str, chunk: int = 32) -> str:
    """Fuse (blocks of ``chunk``-voxel cubes) and a pyramid."""
    fuse = {"data_type": "uint16", "chunk_size": [chunk] * 3, "block_scale": [1, 1, 1]}
    stages = [{"stage": "fuse", "output": "fused.ome.zarr", "params": fuse}, {"stage": "multiscale"}]
    return write_yaml(tmp_path / "pipeline.yml", {"xml": xml, "output": output, "stages": stages})


# -- the cluster file and the security checks -------------------------------------------------------------


def test_cluster_kwargs_follow_the_file(tmp_path):
    config = load_cluster_config(write_yaml(tmp_path / "c.yml", {**CLUSTER, "key_name": "me", "ami": "ami-0abc"}))
    kwargs = aws.ec2_cluster_kwargs(config, ["sg-0123456789abcdef0"])
    assert kwargs == {
        "region": "us-east-1", "instance_type": "g5.xlarge", "n_workers": 3, "worker_class": WORKER_CLASS,
        "worker_options": {"memory_limit": "24GB"}, "docker_image": "ghcr.io/example/rhapso-gpu:gpu",
        "docker_args": "--entrypoint=/usr/bin/env",
        "bootstrap": True, "security_groups": ["sg-0123456789abcdef0"], "filesystem_size": 100, "security": True,
        "env_vars": {"RHAPSO_S3_MAX_ATTEMPTS": "10"}, "instance_tags": {"created-by": "rhapso-gpu"},
        "volume_tags": {"created-by": "rhapso-gpu"}, "ami": "ami-0abc", "key_name": "me",
        "iam_instance_profile": {"Name": "rhapso-s3-read-write"},
    }
    assert [r["FromPort"] for r in aws.ingress_rules(config)] == [8786, 8787, 22]
    assert all(r["IpRanges"] == [{"CidrIp": "203.0.113.7/32"}] for r in aws.ingress_rules(config))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"instance_typ": "g5.xlarge"}, "unknown parameter 'instance_typ'; did you mean 'instance_type'?"),
        ({"instance_type": "t3.large"}, "parameter 'instance_type': Value error, 't3' is not a GPU family"),
        ({"n_workers": 0}, "parameter 'n_workers': Input should be greater than or equal to 1"),
        ({"region": "US West"}, "parameter 'region': Value error, expected a region name such as us-west-2"),
        ({"security_group": "my-group"}, "parameter 'security_group': Value error, expected 'create' or a"),
        ({"worker_memory": "lots"}, "parameter 'worker_memory'"),
        ({"market": "spot"}, "EC2Cluster starts on-demand instances only"),
        ({"allowed_cidr": None}, "security_group 'create' needs the caller's address"),
        ({"allowed_cidr": "0.0.0.0/0"}, "opens the scheduler and dashboard to the internet"),
        ({"allowed_cidr": "::/0"}, "opens the scheduler and dashboard to the internet"),
    ],
)
def test_bad_cluster_files_are_one_line_errors(tmp_path, pipeline_on_s3, capsys, change, message):
    cluster = write_yaml(tmp_path / "cluster.yml", {**CLUSTER, **change})
    assert aws.main([cluster, pipeline_on_s3, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pipelines.aws: error: {cluster}: ") and message in err and err.count("\n") == 1, err


def test_ports_open_to_the_world_need_the_flag_and_tls(tmp_path, pipeline_on_s3, capsys):
    world = write_yaml(tmp_path / "world.yml", {**CLUSTER, "allowed_cidr": "0.0.0.0/0"})
    assert aws.main([world, pipeline_on_s3, "--dry-run", "--allow-public-ports"]) == 0
    assert '"CidrIp": "0.0.0.0/0"' in capsys.readouterr().out
    plain = write_yaml(tmp_path / "plain.yml", {**CLUSTER, "allowed_cidr": "0.0.0.0/0", "tls": False})
    assert aws.main([plain, pipeline_on_s3, "--dry-run", "--allow-public-ports"]) == 2
    assert "ports open to the internet need tls: true" in capsys.readouterr().err


def test_my_ip_flag_sets_the_only_address_let_in(tmp_path, pipeline_on_s3, capsys):
    cluster = write_yaml(tmp_path / "cluster.yml", {**CLUSTER, "allowed_cidr": None})
    assert aws.main([cluster, pipeline_on_s3, "--dry-run", "--my-ip", "198.51.100.23"]) == 0
    out = capsys.readouterr().out
    assert '"CidrIp": "198.51.100.23/32"' in out and "0.0.0.0/0" not in out


def test_local_paths_are_refused(tmp_path, capsys):
    cluster = write_yaml(tmp_path / "cluster.yml", CLUSTER)
    pipeline = pipeline_file(tmp_path, "s3://bucket/dataset.xml", str(tmp_path / "out"))
    assert aws.main([cluster, pipeline, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"stage fuse uses the local path {tmp_path / 'out'}/fused.ome.zarr; workers on AWS see only s3://" in err


def test_secret_values_stay_out_of_error_messages(tmp_path, pipeline_on_s3, capsys):
    cluster = write_yaml(tmp_path / "cluster.yml", {**CLUSTER, "env": {**SECRETS["yaml"], "1-not-a-name": "x"}})
    assert aws.main([cluster, pipeline_on_s3, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "not an environment variable name: '1-not-a-name'" in err
    assert not [v for v in SECRETS["yaml"].values() if v in err], err


# -- the dry run ---------------------------------------------------------------------------------------------

NO_NETWORK = """
import socket, sys

def refuse(*args, **kwargs):
    raise AssertionError("the dry run opened a network connection")

socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
from pipelines import aws
status = aws.main(sys.argv[1:])
print("MODULES", [m for m in ("boto3", "botocore", "dask_cloudprovider", "distributed") if m in sys.modules])
sys.exit(status)
"""


def test_dry_run_prints_the_cluster_and_the_plan_and_contacts_nothing(tmp_path):
    cluster = write_yaml(tmp_path / "cluster.yml", {**CLUSTER, "env": {**CLUSTER["env"], **SECRETS["yaml"]}})
    pipeline = pipeline_file(tmp_path, "s3://my-bucket/exaSPIM/dataset.xml", "s3://my-bucket/exaSPIM/out/")
    env = {**os.environ, **SECRETS["env"], "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # a port nothing listens on
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK, cluster, pipeline, "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "MODULES []" in out  # neither boto3 nor dask-cloudprovider nor even a dask client was imported
    for value in [*SECRETS["env"].values(), *SECRETS["yaml"].values()]:
        assert value not in out and value not in proc.stderr

    # the exact EC2Cluster keyword arguments, secrets redacted
    start = out.index("{", out.index("EC2Cluster (dask_cloudprovider.aws) keyword arguments:"))
    kwargs, _ = json.JSONDecoder().raw_decode(out[start:])
    assert kwargs["worker_class"] == "dask_cuda.CUDAWorker" and kwargs["security"] is True
    assert kwargs["security_groups"] == [aws.CREATED_GROUP]
    assert kwargs["env_vars"] == {"RHAPSO_S3_MAX_ATTEMPTS": "10", "AWS_SECRET_ACCESS_KEY": "***",
                                  "MY_API_TOKEN": "***"}
    expected = aws.ec2_cluster_kwargs(load_cluster_config(cluster), [aws.CREATED_GROUP])
    assert {k: v for k, v in kwargs.items() if k != "env_vars"} == {
        k: v for k, v in expected.items() if k != "env_vars"}

    # the security group and the plan
    assert '{"IpProtocol": "tcp", "FromPort": 8786, "ToPort": 8786, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}' in out
    assert "0.0.0.0/0" not in out
    assert "TLS between client, scheduler and workers: on" in out
    assert ("  1. fuse: reads s3://my-bucket/exaSPIM/dataset.xml; writes s3://my-bucket/exaSPIM/out/fused.ome.zarr"
            in out)
    assert "  2. multiscale: reads s3://my-bucket/exaSPIM/out/fused.ome.zarr;" in out
    assert "dry run: nothing was started\nMODULES" in out


# -- a run: cluster, security group, pipeline, teardown ------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_on_s3(s3_server, tmp_path_factory):
    """A small synthetic dataset uploaded to the moto bucket; its s3:// XML."""
    local = tmp_path_factory.mktemp("aws-data")
    args = ["synth", str(local), "--tiles", "2x1x1", "--tile-size", "64x64x32", "--seed", "2"]
    assert rhapso([*args, "--cluster", "synchronous", "--backend", "numpy", "-q"]) == 0
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(local), f"{s3_server.bucket}/aws-data", recursive=True)
    return s3_server.url("aws-data/dataset.xml")


@pytest.fixture
def pipeline_on_s3(tmp_path, s3_server):
    return pipeline_file(tmp_path, s3_server.url("aws-data/dataset.xml"), s3_server.url("aws-out/"))


@pytest.fixture
def moto_endpoint(s3_server, monkeypatch):
    """Point every AWS client (boto3, s3fs) of this process at the moto server; returns an EC2 client."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    s3fs.S3FileSystem.clear_instance_cache()  # cached file systems keep the endpoint they were made with
    yield boto3.client("ec2", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()


class LocalStandIn(LocalCluster):
    """Takes EC2Cluster's keyword arguments, starts a one-worker LocalCluster and counts the closes."""

    made: ClassVar[list] = []

    def __init__(self, **ec2_kwargs):
        super().__init__(n_workers=1, threads_per_worker=2, processes=False,  # in-process (inproc://)
                         dashboard_address=None)
        self.ec2_kwargs = ec2_kwargs
        self.closes = 0
        LocalStandIn.made.append(self)

    def close(self, *args, **kwargs):
        self.closes += 1
        return super().close(*args, **kwargs)


def _rhapso_groups(ec2) -> list[str]:
    groups = ec2.describe_security_groups()["SecurityGroups"]
    return [g["GroupId"] for g in groups if g["GroupName"].startswith("rhapso-gpu-")]


def test_run_creates_the_group_runs_the_pipeline_and_tears_down(tmp_path, s3_server, dataset_on_s3, moto_endpoint):
    ec2 = moto_endpoint
    config = load_cluster_config(write_yaml(tmp_path / "cluster.yml", CLUSTER))
    pipeline = pipeline_file(tmp_path, dataset_on_s3, s3_server.url("aws-out-ok/"))
    seen = {}

    class Recording(LocalStandIn):
        def __init__(self, **kwargs):  # the group exists, limited to the caller, while the cluster runs
            (group,) = kwargs["security_groups"]
            seen["rules"] = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
            super().__init__(**kwargs)

    LocalStandIn.made.clear()
    rows = aws.run_on_aws(config, pipeline, backend="numpy", quiet=True, cluster_class=Recording, ec2=ec2)
    assert [(r.name, r.status) for r in rows] == [("fuse", "ran"), ("multiscale", "ran")]
    (cluster,) = LocalStandIn.made
    assert cluster.closes >= 1 and cluster.status.name == "closed"
    assert cluster.ec2_kwargs["worker_class"] == "dask_cuda.CUDAWorker" and cluster.ec2_kwargs["security"] is True
    ports = {(p["FromPort"], p["IpRanges"][0]["CidrIp"]) for p in seen["rules"] if p["IpProtocol"] == "tcp"}
    assert ports == {(8786, "203.0.113.7/32"), (8787, "203.0.113.7/32")}
    own = [p for p in seen["rules"] if p["IpProtocol"] == "-1"]
    assert own and own[0]["UserIdGroupPairs"][0]["GroupId"] == cluster.ec2_kwargs["security_groups"][0]
    assert _rhapso_groups(ec2) == []  # deleted at teardown
    fused = container_attributes(s3_server.url("aws-out-ok/fused.ome.zarr"))
    assert fused["complete"] is True


def test_failed_pipeline_still_tears_down(tmp_path, s3_server, moto_endpoint):
    config = load_cluster_config(write_yaml(tmp_path / "cluster.yml", CLUSTER))
    pipeline = pipeline_file(tmp_path, s3_server.url("no-such/dataset.xml"), s3_server.url("aws-out-fail/"))
    LocalStandIn.made.clear()
    with pytest.raises(UserError, match="no-such/dataset.xml: dataset XML not found"):
        aws.run_on_aws(config, pipeline, quiet=True, cluster_class=LocalStandIn, ec2=moto_endpoint)
    (cluster,) = LocalStandIn.made
    assert cluster.closes >= 1 and cluster.status.name == "closed"
    assert _rhapso_groups(moto_endpoint) == []


def test_cluster_that_fails_to_start_leaves_no_group(tmp_path, pipeline_on_s3, moto_endpoint):
    config = load_cluster_config(write_yaml(tmp_path / "cluster.yml", CLUSTER))

    def no_capacity(**kwargs):
        raise RuntimeError("InsufficientInstanceCapacity")

    with pytest.raises(RuntimeError, match="InsufficientInstanceCapacity"):
        aws.run_on_aws(config, pipeline_on_s3, quiet=True, cluster_class=no_capacity, ec2=moto_endpoint)
    assert _rhapso_groups(moto_endpoint) == []


def test_existing_group_open_to_the_world_is_refused(tmp_path, pipeline_on_s3, moto_endpoint):
    ec2 = moto_endpoint
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName="wide-open", Description="test", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    config = load_cluster_config(write_yaml(tmp_path / "cluster.yml", {**CLUSTER, "security_group": group}))
    started = []
    with pytest.raises(UserError, match=f"security group {group}: lets 0.0.0.0/0 reach the dask ports 8786/8787"):
        aws.run_on_aws(config, pipeline_on_s3, quiet=True, cluster_class=lambda **kw: started.append(kw), ec2=ec2)
    assert started == []  # refused before any instance
    ec2.delete_security_group(GroupId=group)


SIGNALLED = """
import sys
from pathlib import Path
from distributed import LocalCluster
from pipelines import aws

marker = Path(sys.argv[1])

class StandIn(LocalCluster):
    def __init__(self, **kwargs):
        super().__init__(n_workers=1, processes=False, dashboard_address=None)
        marker.write_text("started")

sys.exit(aws.main(sys.argv[2:], cluster_class=StandIn))
"""


@pytest.mark.parametrize("moment", ["starting", "fusing"])
@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_tear_the_cluster_down(tmp_path, s3_server, dataset_on_s3, moto_endpoint, signum,
                                                  status, moment):
    """The signal comes while the cluster starts (held until it exists), or once fused blocks are being written."""
    cluster = write_yaml(tmp_path / "cluster.yml", CLUSTER)
    out_key = f"aws-out-{signum.name}-{moment}"
    pipeline = pipeline_file(tmp_path, dataset_on_s3, s3_server.url(f"{out_key}/"), chunk=16)
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SIGNALLED, str(marker), cluster, pipeline, "--backend", "numpy"],
                            cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    progress = f"{s3_server.bucket}/{out_key}/fused.ome.zarr/.rhapso-progress"
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if marker.exists() and (moment == "starting" or (fs.exists(progress) and fs.ls(progress, refresh=True))):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    assert "cluster closed" in out  # printed by the teardown, after close() returned
    assert "the cluster was torn down" in err
    assert _rhapso_groups(moto_endpoint) == []
    # (the fused output may be complete: a signal that distributed's gc callback swallowed is raised again only
    # when the run ends; pipelines.aws._signals_raise)


def test_the_template_and_the_s3_pipeline_template_dry_run(capsys):
    cluster, pipeline = str(ROOT / "params" / "aws-cluster.yml"), str(ROOT / "params" / "pipeline-exaspim-s3.yml")
    assert aws.main([cluster, pipeline, "--dry-run"]) == 2  # the template leaves the caller's address to fill in
    assert "needs the caller's address" in capsys.readouterr().err
    assert aws.main([cluster, pipeline, "--dry-run", "--my-ip", "203.0.113.7"]) == 0
    out = capsys.readouterr().out
    assert '"instance_type": "g5.xlarge"' in out and "8 stages on s3://" in out


def test_without_dask_cloudprovider_a_real_run_is_a_one_line_error(tmp_path, pipeline_on_s3, capsys):
    try:
        import dask_cloudprovider  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("dask-cloudprovider is installed here; this checks the message where it is not")
    cluster = write_yaml(tmp_path / "cluster.yml", CLUSTER)
    assert aws.main([cluster, pipeline_on_s3]) == 2
    assert capsys.readouterr().err == (
        "pipelines.aws: error: pipelines.aws needs dask-cloudprovider: from the repository, scripts/setup.sh aws "
        "or pip install -e '.[aws]' (or use --dry-run)\n")
