"""Run a pipeline file on a dask-cuda cluster of EC2 GPU instances, and always tear the cluster down.

Usage (from the repository root)::

    python -m pipelines.aws CLUSTER.yml PIPELINE.yml [--my-ip A.B.C.D] [--dry-run]

``CLUSTER.yml`` is validated by :mod:`pipelines.aws_config` (template:
``params/aws-cluster.yml``). The run creates a security group limited to the
caller's address (or checks the configured one), starts dask-cloudprovider's
``EC2Cluster`` with ``dask_cuda.CUDAWorker`` workers and TLS, runs the
pipeline (inputs and outputs on ``s3://``) with
:func:`rhapso_gpu.pipeline.run_pipeline`, and closes the cluster and deletes
the group it created on success, on errors, on Ctrl-C and on SIGTERM.
``--dry-run`` prints the ``EC2Cluster`` arguments, the security group and the
pipeline plan, and contacts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from pipelines._run import describe_plan, entry_point, load_plan, remote_only, run_plan
from pipelines.aws_config import (
    DASHBOARD_PORT,
    SCHEDULER_PORT,
    AwsClusterConfig,
    check_security,
    describe_kwargs,
    ec2_cluster_kwargs,
    ingress_rules,
    is_secret_name,
    is_world,
    load_cluster_config,
    redact,
)
from rhapso_gpu.errors import UserError
from rhapso_gpu.scheduler import Cluster

log = logging.getLogger("rhapso_gpu")

CREATED_GROUP = "<security group created for this run>"
"""Stands in for the id of the group :func:`create_security_group` will create (dry run)."""


def _ec2_cluster_class():
    try:
        from dask_cloudprovider.aws import EC2Cluster
    except ImportError:
        raise UserError(
            "pipelines.aws needs dask-cloudprovider: from the repository, scripts/setup.sh aws "
            "or pip install -e '.[aws]' (or use --dry-run)"
        ) from None
    return EC2Cluster


def _ec2_client(region: str):
    try:
        import boto3
    except ImportError:
        raise UserError(
            "pipelines.aws needs boto3: from the repository, scripts/setup.sh aws or pip install -e '.[aws]'"
        ) from None
    return boto3.client("ec2", region_name=region)


def _vpc_of(ec2, config: AwsClusterConfig) -> str:
    if config.vpc:
        return config.vpc
    if config.subnet_id:
        return ec2.describe_subnets(SubnetIds=[config.subnet_id])["Subnets"][0]["VpcId"]
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise UserError(f"region {config.region}: no default VPC; set vpc or subnet_id in the cluster file")
    return vpcs[0]["VpcId"]


def create_security_group(ec2, config: AwsClusterConfig, name: str) -> str:
    """Create a group for one run: 8786/8787 (and 22 with a key) from ``allowed_cidr``, all traffic within itself.

    Parameters
    ----------
    ec2 : botocore EC2 client
    config : AwsClusterConfig
        With ``allowed_cidr`` set (see :func:`pipelines.aws_config.check_security`).
    name : str
        Group name (unique per run).

    Returns
    -------
    str
        The group id.
    """
    vpc = _vpc_of(ec2, config)
    group = ec2.create_security_group(
        GroupName=name,
        Description="rhapso-gpu dask cluster: scheduler and dashboard for the caller only",
        VpcId=vpc,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "created-by", "Value": "rhapso-gpu"}]}],
    )["GroupId"]
    try:
        own = {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[*ingress_rules(config), own])
    except BaseException:
        ec2.delete_security_group(GroupId=group)
        raise
    return group


def _covers_dask_ports(permission: dict) -> bool:
    if permission.get("IpProtocol") == "-1":
        return True
    lo, hi = permission.get("FromPort", 0), permission.get("ToPort", 65535)
    return any(lo <= p <= hi for p in (SCHEDULER_PORT, DASHBOARD_PORT))


def check_existing_group(ec2, group_id: str, allow_public_ports: bool, tls: bool) -> None:
    """Refuse an existing group that lets the world reach the scheduler or dashboard ports.

    Raises
    ------
    UserError
        When an inbound rule from ``0.0.0.0/0`` or ``::/0`` covers 8786 or 8787
        and ``allow_public_ports`` is false (or TLS is off).
    """
    groups = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    for permission in groups[0].get("IpPermissions", []):
        if not _covers_dask_ports(permission):
            continue
        cidrs = [r["CidrIp"] for r in permission.get("IpRanges", [])]
        cidrs += [r["CidrIpv6"] for r in permission.get("Ipv6Ranges", [])]
        world = [c for c in cidrs if is_world(c)]
        if world and not (allow_public_ports and tls):
            raise UserError(
                f"security group {group_id}: lets {world[0]} reach the dask ports {SCHEDULER_PORT}/{DASHBOARD_PORT}; "
                "restrict it to your address, use security_group: create, or pass --allow-public-ports (TLS only)"
            )


def delete_security_group(ec2, group_id: str, timeout: float = 600.0, interval: float = 10.0) -> bool:
    """Delete a group, retrying while terminating instances still hold it; False (and a warning) on failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return True
        except Exception as e:  # noqa: BLE001  botocore's ClientError; DependencyViolation while instances stop
            code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
            if code != "DependencyViolation" or time.monotonic() >= deadline:
                log.warning("could not delete security group %s (%s); delete it by hand", group_id, code)
                return False
            time.sleep(interval)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks run."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only there can signal handlers change


def _interrupt(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else _Terminated()


@contextmanager
def _signals_handled(react) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call ``react(signum, received)``; the first is raised after it.

    ``received`` lists the signals so far (this one included). Handlers are
    only changed in the main thread; the previous ones are restored on exit.
    """
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        react(signum, received)

    signals = (signal.SIGINT, signal.SIGTERM) if _in_main_thread() else ()
    previous = {s: signal.signal(s, on_signal) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise _interrupt(received[0])


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM raises :class:`_Terminated`, even if swallowed once.

    Python drops an exception raised inside a garbage-collection callback or a
    ``__del__`` ("Exception ignored in ..."), and distributed has such
    callbacks; a signal that lands there is raised again when the block ends.
    """
    def on_signal(signum, received):
        raise _interrupt(signum)

    # if the block ends normally although a signal came, it was swallowed somewhere: raised again on exit
    with _signals_handled(on_signal):
        yield


@contextmanager
def _signals_deferred(console: Console) -> Iterator[None]:
    """Hold SIGINT and SIGTERM while cloud resources are being created, then raise.

    An interrupt in the middle of ``EC2Cluster(...)`` would lose the object
    that can terminate its instances; instead the block finishes, its result is
    kept for the teardown, and the interrupt is raised after it.
    """
    def hold(signum, received):
        if len(received) == 1:
            console.print("interrupted: tearing down once the resources being created exist")

    with _signals_handled(hold):
        yield


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Teardown is not interrupted by a second Ctrl-C or SIGTERM."""
    signals = (signal.SIGINT, signal.SIGTERM) if _in_main_thread() else ()
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _teardown(cluster, client, ec2, group: str | None, console: Console) -> None:
    with _signals_ignored():
        for what, obj in (("client", client), ("cluster", cluster)):
            if obj is None:
                continue
            try:
                obj.close()
            except Exception as e:  # noqa: BLE001  keep tearing down: the cluster must still be closed
                log.warning("closing the %s failed: %s", what, redact(str(e)))
        if cluster is not None:
            console.print("cluster closed")
        if group is not None and ec2 is not None and delete_security_group(ec2, group):
            console.print(f"security group {group} deleted")


def run_on_aws(
    config: AwsClusterConfig,
    pipeline_path: str,
    allow_public_ports: bool = False,
    backend: str = "auto",
    console: Console | None = None,
    quiet: bool = False,
    cluster_class: Callable[..., Any] | None = None,
    ec2: Any = None,
) -> list:
    """Start the cluster, run the pipeline on it, and tear everything down whatever happens.

    Parameters
    ----------
    config : AwsClusterConfig
    pipeline_path : str
        Pipeline file whose inputs and outputs are on ``s3://``.
    allow_public_ports : bool
        Accept ports open to the world (TLS only).
    backend : {'auto', 'numpy', 'cupy'}
    console : rich.console.Console, optional
    quiet : bool
    cluster_class : callable, optional
        Replaces ``EC2Cluster`` (tests); called with :func:`ec2_cluster_kwargs`.
    ec2 : optional
        A boto3 EC2 client (default: one for ``config.region``) that creates
        and deletes the run's security group, or checks the configured one.

    Returns
    -------
    list
        The stage results of :func:`rhapso_gpu.pipeline.run_pipeline`.
    """
    console = console or Console(highlight=False)
    check_security(config, allow_public_ports)
    pipeline = load_plan(pipeline_path)
    remote_only(pipeline, pipeline_path)
    cluster_class = cluster_class or _ec2_cluster_class()
    cluster = client = group = None
    with _signals_raise():
        try:
            ec2 = ec2 or _ec2_client(config.region)
            if config.security_group == "create":
                with _signals_deferred(console):
                    group = create_security_group(ec2, config, f"rhapso-gpu-{uuid.uuid4().hex[:12]}")
                console.print(f"security group {group}: ports {SCHEDULER_PORT}/{DASHBOARD_PORT} from "
                              f"{config.allowed_cidr} only")
                groups = [group]
            else:
                check_existing_group(ec2, config.security_group, allow_public_ports, config.tls)
                groups = [config.security_group]
            console.print(f"starting {config.n_workers} x {config.instance_type} workers in {config.region} ...")
            with _signals_deferred(console):
                cluster = cluster_class(**ec2_cluster_kwargs(config, groups))
            from distributed import Client

            client = Client(cluster, security=getattr(cluster, "security", None), set_as_default=False)
            client.wait_for_workers(1, timeout=1800)
            n = len(client.scheduler_info()["workers"])
            console.print(f"cluster ready at {client.scheduler.address} ({n} workers)")
            return run_plan(pipeline, Cluster(spec="aws-ec2", client=client, n_workers=n), backend, console, quiet)
        finally:
            _teardown(cluster, client, ec2, group, console)


def dry_run(config: AwsClusterConfig, pipeline_path: str, allow_public_ports: bool, console: Console) -> None:
    """Print the EC2Cluster arguments, the security group and the pipeline plan; contact nothing."""
    check_security(config, allow_public_ports)
    pipeline = load_plan(pipeline_path)
    remote_only(pipeline, pipeline_path)
    groups = [CREATED_GROUP if config.security_group == "create" else config.security_group]
    console.print("EC2Cluster (dask_cloudprovider.aws) keyword arguments:")
    console.print(describe_kwargs(ec2_cluster_kwargs(config, groups)), markup=False)
    if config.security_group == "create":
        rules = ingress_rules(config) + [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": CREATED_GROUP}]}]
        console.print("security group to create (deleted at teardown), inbound rules:")
        for rule in rules:
            console.print("  " + json.dumps(rule), markup=False)
    else:
        console.print(f"security group {config.security_group}: checked for world-open dask ports before starting")
    console.print(f"TLS between client, scheduler and workers: {'on' if config.tls else 'off'}")
    secret_env = sorted(k for k in config.env if is_secret_name(k))
    if secret_env:
        console.print(f"note: env passes credentials ({', '.join(secret_env)}) in instance user data; "
                      "prefer iam_instance_profile")
    elif not config.iam_instance_profile:
        console.print("note: no iam_instance_profile and no credentials in env: workers may not reach S3")
    console.print(redact(describe_plan(pipeline), config.env), markup=False)
    console.print("dry run: nothing was started")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.aws",
        description="Run a pipeline file on a dask-cuda cluster of EC2 GPU instances (dask-cloudprovider), "
        "torn down at the end, on errors and on Ctrl-C. Inputs and outputs must be on s3://.",
    )
    p.add_argument("cluster", help="cluster YAML (template: params/aws-cluster.yml)")
    p.add_argument("pipeline", help="pipeline YAML (see params/pipeline-*.yml)")
    p.add_argument("--dry-run", action="store_true", help="print the cluster arguments and the plan; start nothing")
    p.add_argument("--my-ip", metavar="ADDRESS", help="your public address (or CIDR): the only one let in")
    p.add_argument("--allow-public-ports", action="store_true",
                   help="accept scheduler/dashboard ports open to the internet (TLS still required)")
    p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    return p


def main(argv: list[str] | None = None, cluster_class: Callable[..., Any] | None = None) -> int:
    """The command line; returns the exit status (2 for user errors, 130/143 when interrupted)."""
    args = build_parser().parse_args(argv)

    def body(console: Console) -> None:
        config = load_cluster_config(args.cluster, args.my_ip, args.allow_public_ports)
        if args.dry_run:
            dry_run(config, args.pipeline, args.allow_public_ports, console)
        else:
            run_on_aws(config, args.pipeline, args.allow_public_ports, args.backend, console, args.quiet,
                       cluster_class)

    return entry_point("pipelines.aws", args, body, "interrupted; the cluster was torn down",
                       {_Terminated: ("terminated; the cluster was torn down", 143)})


if __name__ == "__main__":
    sys.exit(main())
