"""The AWS cluster file: a validated description of a dask-cuda cluster on EC2, and what it becomes.

:func:`load_cluster_config` reads the YAML (``params/aws-cluster.yml`` is the
commented template) into :class:`AwsClusterConfig`; :func:`ec2_cluster_kwargs`
turns it into the keyword arguments of dask-cloudprovider's ``EC2Cluster``;
:func:`ingress_rules` lists what a security group created for the run lets in.
Nothing here contacts AWS.

Security model
--------------
* The scheduler (8786) and dashboard (8787) are reachable only from
  ``allowed_cidr`` (the caller's address, given in the file or with ``--my-ip``;
  never looked up on the internet) and from the cluster's own instances.
* Client, scheduler and workers talk TLS with temporary self-signed
  certificates (``tls: true``, dask-cloudprovider's ``security=True``).
* Opening the ports to the world (``0.0.0.0/0``, ``::/0``) is refused unless
  the caller passes ``--allow-public-ports``, and even then only with TLS.
* Secrets (values of ``env`` keys that look like credentials, and the values of
  such variables in the caller's environment) are never printed: every text
  shown goes through :func:`redact`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Any, Literal

import yaml
from dask.utils import parse_bytes
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.params import validate_params

SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p3", "p4d", "p4de", "p5", "p5e")
"""EC2 GPU instance families with NVIDIA GPUs that CuPy and dask-cuda support."""

WORKER_CLASS = "dask_cuda.CUDAWorker"
DOCKER_ARGS = "--entrypoint=/usr/bin/env"
"""EC2Cluster runs ``docker run ... IMAGE COMMAND`` with dask's own commands; rhapso-gpu's images have
``rhapso-gpu`` as entrypoint, so the instances replace it by ``env``, which runs COMMAND as given."""
REDACTED = "***"
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW|CREDENTIAL|ACCESS_KEY|KEY_ID|PRIVATE|API_KEY", re.IGNORECASE)
_WORLD = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


class AwsClusterConfig(BaseModel):
    """A dask-cuda cluster on EC2 GPU instances (one worker per GPU instance, plus a scheduler instance).

    Sizes of memory are strings such as ``"24GB"``; paths are not involved.
    """

    model_config = ConfigDict(extra="forbid")

    region: str = Field(description="AWS region, e.g. us-west-2")
    instance_type: str = Field("g5.xlarge", description="EC2 GPU instance type of the scheduler and the workers")
    n_workers: int = Field(2, ge=1, le=1000, description="worker instances (one dask_cuda.CUDAWorker each)")
    ami: str | None = Field(None, description="AMI id; default: dask-cloudprovider's Ubuntu image")
    bootstrap: bool = Field(True, description="install Docker and NVIDIA drivers at boot (false for a GPU AMI)")
    docker_image: str = Field(description="image with rhapso-gpu, its gpu extra and dask-cuda (docker/Dockerfile.gpu)")
    security_group: str = Field(
        "create", description="'create' (a group for this run, limited to allowed_cidr) or an existing sg-... id"
    )
    allowed_cidr: str | None = Field(None, description="caller's address range that may reach 8786/8787, e.g. a /32")
    vpc: str | None = Field(None, description="VPC id; default: the account's default VPC")
    subnet_id: str | None = Field(None, description="subnet id; default: a subnet of the VPC")
    availability_zone: str | None = None
    key_name: str | None = Field(None, description="EC2 key pair for SSH (port 22 opened to allowed_cidr)")
    iam_instance_profile: str | None = Field(None, description="instance profile name giving the workers S3 access")
    worker_memory: str = Field("16GB", description="host memory limit per worker, e.g. 16GB")
    device_memory_limit: str | None = Field(None, description="GPU memory per worker before spilling, e.g. 20GB")
    market: Literal["on-demand", "spot"] = "on-demand"
    filesystem_size: int = Field(100, ge=20, description="root volume size, GB")
    tls: bool = Field(True, description="TLS between client, scheduler and workers (temporary certificates)")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables of the instances")

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+", v):
            raise ValueError("expected a region name such as us-west-2")
        return v

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, v: str) -> str:
        family, dot, size = v.partition(".")
        if not dot or not re.fullmatch(r"[a-z0-9-]*large|metal[a-z0-9-]*", size):
            raise ValueError("expected an EC2 instance type such as g5.xlarge")
        if family not in GPU_FAMILIES:
            raise ValueError(f"'{family}' is not a GPU family with NVIDIA GPUs (one of {', '.join(GPU_FAMILIES)})")
        return v

    @field_validator("security_group")
    @classmethod
    def _security_group(cls, v: str) -> str:
        if v != "create" and not re.fullmatch(r"sg-[0-9a-f]{8,17}", v):
            raise ValueError("expected 'create' or a security group id like sg-0123456789abcdef0")
        return v

    @field_validator("allowed_cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return None
        return str(ipaddress.ip_network(v.strip(), strict=False))

    @field_validator("worker_memory", "device_memory_limit")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            parse_bytes(v)  # ValueError on a bad size
        return v

    @field_validator("market")
    @classmethod
    def _market(cls, v: str) -> str:
        if v == "spot":
            raise ValueError(
                "dask-cloudprovider's EC2Cluster starts on-demand instances only; use on-demand, "
                "or start spot instances yourself and join them to a scheduler (pipelines/README.md)"
            )
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"not an environment variable name: {bad[0]!r}")
        return v


def load_cluster_config(
    location: str, allowed_cidr: str | None = None, allow_public_ports: bool = False
) -> AwsClusterConfig:
    """Read, validate and security-check a cluster YAML; ``allowed_cidr`` (from ``--my-ip``) overrides the file's.

    Raises
    ------
    UserError
        Unreadable file, invalid YAML, an unknown key (with the nearest valid
        one), a bad value, or settings refused by :func:`check_security`, in
        one line naming the file and the key.
    """
    try:
        values = yaml.safe_load(storage.read_bytes(location, what="cluster file")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"{location}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    if not isinstance(values, dict):
        raise UserError(f"{location}: expected a mapping of cluster settings")
    if allowed_cidr is not None:
        values["allowed_cidr"] = allowed_cidr
    try:
        config = validate_params(AwsClusterConfig, values, source=location)
    except UserError as e:  # the message holds the rejected input: hide secrets it might carry
        raise UserError(redact(str(e), values.get("env") if isinstance(values.get("env"), dict) else None)) from None
    check_security(config, allow_public_ports, where=location)
    return config


def check_security(config: AwsClusterConfig, allow_public_ports: bool, where: str = "cluster settings") -> None:
    """Refuse settings that would expose the scheduler or the dashboard.

    Raises
    ------
    UserError
        A created group without ``allowed_cidr``; ``allowed_cidr`` open to the
        world without ``allow_public_ports``; world access without TLS.
    """
    if config.security_group != "create":
        return  # an existing group's rules are checked against AWS before starting (aws.check_existing_group)
    if config.allowed_cidr is None:
        raise UserError(
            f"{where}: security_group 'create' needs the caller's address: set allowed_cidr "
            "(e.g. 203.0.113.7/32) or pass --my-ip 203.0.113.7"
        )
    if is_world(config.allowed_cidr):
        if not allow_public_ports:
            raise UserError(
                f"{where}: allowed_cidr {config.allowed_cidr} opens the scheduler and dashboard to the internet; "
                "use your own address (a /32) or pass --allow-public-ports"
            )
        if not config.tls:
            raise UserError(f"{where}: ports open to the internet need tls: true")


def is_world(cidr: str) -> bool:
    """True when ``cidr`` contains every address (``0.0.0.0/0`` or ``::/0``)."""
    return ipaddress.ip_network(cidr, strict=False) in _WORLD


def ingress_rules(config: AwsClusterConfig) -> list[dict[str, Any]]:
    """Inbound rules of a group created for the run (the EC2 ``IpPermissions`` format, minus the group's own id).

    The scheduler and dashboard ports (and SSH with ``key_name``) from
    ``allowed_cidr``; everything from instances of the same group is added by
    :func:`pipelines.aws.create_security_group`, which knows the group id.
    """
    ports = [SCHEDULER_PORT, DASHBOARD_PORT] + ([22] if config.key_name else [])
    net = ipaddress.ip_network(config.allowed_cidr, strict=False)
    ranges = {"Ipv6Ranges": [{"CidrIpv6": str(net)}]} if net.version == 6 else {"IpRanges": [{"CidrIp": str(net)}]}
    return [{"IpProtocol": "tcp", "FromPort": p, "ToPort": p, **ranges} for p in ports]


def ec2_cluster_kwargs(config: AwsClusterConfig, security_group_ids: list[str]) -> dict[str, Any]:
    """Keyword arguments of ``dask_cloudprovider.aws.EC2Cluster`` for ``config``.

    ``security_group_ids`` are the groups to attach (the created one, or the
    configured one); EC2Cluster would otherwise create a group open to the
    internet. Optional settings that are unset are left out, so EC2Cluster's
    defaults apply.
    """
    worker_options: dict[str, Any] = {"memory_limit": config.worker_memory}
    if config.device_memory_limit:
        worker_options["device_memory_limit"] = config.device_memory_limit
    kwargs: dict[str, Any] = {
        "region": config.region,
        "instance_type": config.instance_type,
        "n_workers": config.n_workers,
        "worker_class": WORKER_CLASS,
        "worker_options": worker_options,
        "docker_image": config.docker_image,
        "docker_args": DOCKER_ARGS,
        "bootstrap": config.bootstrap,
        "security_groups": list(security_group_ids),
        "filesystem_size": config.filesystem_size,
        "security": config.tls,
        "env_vars": dict(config.env),
        "instance_tags": {"created-by": "rhapso-gpu"},
        "volume_tags": {"created-by": "rhapso-gpu"},
    }
    optional = {
        "ami": config.ami,
        "vpc": config.vpc,
        "subnet_id": config.subnet_id,
        "availability_zone": config.availability_zone,
        "key_name": config.key_name,
        "iam_instance_profile": {"Name": config.iam_instance_profile} if config.iam_instance_profile else None,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def is_secret_name(name: str) -> bool:
    """True for variable names that usually hold credentials (``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ...)."""
    return bool(_SECRET_NAME.search(name))


def redacted_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the values of credential-like names replaced by ``***``."""
    return {k: (REDACTED if is_secret_name(k) else v) for k, v in env.items()}


def redact(text: str, env: dict | None = None) -> str:
    """``text`` with every secret value replaced by ``***``.

    Secrets are the values of credential-like names in ``env`` (the cluster
    file's) and in this process's environment; short values (under 4
    characters) are left alone, they would match everywhere.
    """
    secrets = {
        str(v) for source in (os.environ, env or {}) for k, v in source.items() if is_secret_name(str(k)) and v
    }
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def describe_kwargs(kwargs: dict[str, Any]) -> str:
    """The EC2Cluster keyword arguments as indented JSON, with secrets redacted."""
    shown = dict(kwargs)
    if "env_vars" in shown:
        shown["env_vars"] = redacted_env(shown["env_vars"])
    return redact(json.dumps(shown, indent=2, sort_keys=True), kwargs.get("env_vars"))
