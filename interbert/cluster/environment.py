"""What a remote host's ranks need in their environment, as DeepSpeed's `.deepspeed_env` file.

pdsh starts each host's launcher over ssh in a fresh login environment and passes only the
variables DeepSpeed exports by name (PYTHON*, NCCL*, a few others) and the lines of
`.deepspeed_env` (in the home folder or the folder the `deepspeed` command runs in, or the file
named by DS_ENV_FILE). So PATH (the virtual environment's bin, ninja for DeepSpeed's op builds),
CUDA_HOME, the accelerator choice and the socket interfaces must be written there.

The file's format is DeepSpeed's: one KEY=VALUE per line, nothing else (no comments, no blank
lines: its reader splits every line on '=').
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import sys
from pathlib import Path

PASSED_AS_IS = ("CUDA_HOME", "LD_LIBRARY_PATH", "DS_ACCELERATOR", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                "HF_HOME", "TRANSFORMERS_OFFLINE", "HF_HUB_OFFLINE")
SIOCGIFADDR = 0x8915


def interface_addresses() -> dict[str, str]:
    """IPv4 address of each network interface of this machine that has one."""
    found = {}
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        found[name] = socket.inet_ntoa(packed[20:24])
    return found


def route_source(master_addr: str) -> str:
    """The local address this machine uses to reach `master_addr` (a UDP connect sends nothing)."""
    address = socket.gethostbyname(master_addr)
    if ipaddress.ip_address(address).is_loopback:
        return address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, 9))
        return probe.getsockname()[0]


def interface_towards(master_addr: str) -> str | None:
    """The interface whose address reaches `master_addr`, or None when no interface holds it."""
    source = route_source(master_addr)
    if ipaddress.ip_address(source).is_loopback:
        return "lo"
    return next((name for name, address in interface_addresses().items() if address == source), None)


def cluster_environment(master_addr: str | None, master_port: int | None = None,
                        environ=os.environ) -> dict[str, str]:
    """KEY -> VALUE for `.deepspeed_env`: PATH with this Python's bin first, the variables of
    PASSED_AS_IS that are set here, GLOO/NCCL socket interfaces towards `master_addr`, and
    MASTER_ADDR/MASTER_PORT (pdsh's per-node launcher sets its own; mpirun's ranks need these)."""
    bin_dir = str(Path(sys.executable).parent)
    path = [bin_dir] + [part for part in environ.get("PATH", "").split(os.pathsep) if part and part != bin_dir]
    values = {"PATH": os.pathsep.join(path)}
    for key in PASSED_AS_IS:
        if environ.get(key):
            values[key] = environ[key]
    if not values.get("CUDA_HOME"):
        from torch.utils.cpp_extension import CUDA_HOME  # where torch finds nvcc for op builds, if anywhere

        if CUDA_HOME:
            values["CUDA_HOME"] = CUDA_HOME
    if master_addr:
        values["MASTER_ADDR"] = master_addr
        if master_port:
            values["MASTER_PORT"] = str(master_port)
        interface = interface_towards(master_addr)
        if interface:
            values["GLOO_SOCKET_IFNAME"] = environ.get("GLOO_SOCKET_IFNAME", interface)
            values["NCCL_SOCKET_IFNAME"] = environ.get("NCCL_SOCKET_IFNAME", interface)
    return values


def render(values: dict[str, str]) -> str:
    for key, value in values.items():
        if "\n" in value or "=" in key or not key:
            raise ValueError(f"{key!r} cannot be written to .deepspeed_env")
    return "".join(f"{key}={value}\n" for key, value in values.items())
