"""Hosts for tests: Linux network namespaces joined to the root namespace by veth pairs, and partitions of them.

Each host is a namespace ``posegen-<pid>-<host>`` with one veth pair: ``<host address>`` inside, its gateway
address on the root side, a /30 of its own. All hosts of one :class:`HostNetwork` share a /24 of
10.213.0.0/16 that no interface of the machine uses yet; the choice and the address assignment happen under an
exclusive lock (``/run/lock/posegen-netns.lock``), so parallel runs never pick the same /24. Servers in the root
namespace that listen on a host's gateway address are reached from that host only over its veth pair: the
root namespace's own address, so no forwarding or NAT is needed.

A partition (:meth:`HostNetwork.partition`) is two iptables DROP rules in the host's namespace, on its veth
(inbound and outbound): packets vanish, nothing is refused, open connections hang silently until the heal
(TCP then retransmits what was waiting). Rules live in the namespace, so deleting it removes them.

Requires root, ``ip`` (iproute2) and ``iptables``; :func:`unavailable` says in one line why not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Self

LOCK_PATH = Path("/run/lock/posegen-netns.lock")
PREFIX = "10.213"


def _run(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def unavailable() -> str | None:
    """None when namespaces, veth pairs and iptables can be used here; else one line saying why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"no {tool} command (Debian packages iproute2, iptables)"
    probe = f"posegen-probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
        try:
            _run("ip", "netns", "exec", probe, "iptables", "-w", "-S")
        finally:
            _run("ip", "netns", "del", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace with iptables: {str(exc).splitlines()[0]}"
    return None


@dataclass(frozen=True)
class Host:
    """One namespace: ``address`` inside it, ``gateway`` (the root namespace's end) outside."""

    name: str
    netns: str
    veth_root: str
    veth_host: str
    address: str
    gateway: str

    def exec_prefix(self) -> tuple[str, ...]:
        """The command prefix that runs a program inside this host (``ip netns exec`` execs it in place)."""
        return ("ip", "netns", "exec", self.netns)


class HostNetwork:
    """Hosts ``names`` (at most 63), created on entry and all removed on exit or :meth:`close`, also on failure."""

    def __init__(self, names: list[str], rto_max_ms: int | None = None) -> None:
        """``rto_max_ms``: cap TCP's retransmission backoff in each host (``net.ipv4.tcp_rto_max_ms``, Linux 6.15
        on; ignored where the kernel has no such setting), so a connection that hung through a partition is
        heard again within that long of the heal rather than up to minutes later."""
        self._names = names
        self._rto_max_ms = rto_max_ms
        self.hosts: dict[str, Host] = {}
        self._partitioned: set[str] = set()

    def __enter__(self) -> Self:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        pid = os.getpid()
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = set(re.findall(rf"\b{re.escape(PREFIX)}\.(\d+)\.", _run("ip", "-o", "-4", "addr", "show")))
            third = next((str((pid + i) % 256) for i in range(256) if str((pid + i) % 256) not in used), None)
            if third is None:
                raise RuntimeError(f"every /24 of {PREFIX}.0.0/16 is in use on this machine")
            for index, name in enumerate(self._names):
                base = 4 * index
                host = Host(name=name, netns=f"posegen-{pid}-{name}", veth_root=f"pg{pid}h{index}r",
                            veth_host=f"pg{pid}h{index}n", address=f"{PREFIX}.{third}.{base + 2}",
                            gateway=f"{PREFIX}.{third}.{base + 1}")
                self.hosts[name] = host  # registered first: close() removes whatever part of it exists
                _run("ip", "netns", "add", host.netns)
                _run("ip", "link", "add", host.veth_root, "type", "veth", "peer", "name", host.veth_host)
                _run("ip", "link", "set", host.veth_host, "netns", host.netns)
                _run("ip", "addr", "add", f"{host.gateway}/30", "dev", host.veth_root)
                _run("ip", "link", "set", host.veth_root, "up")
                inside = host.exec_prefix()
                _run(*inside, "ip", "addr", "add", f"{host.address}/30", "dev", host.veth_host)
                _run(*inside, "ip", "link", "set", host.veth_host, "up")
                _run(*inside, "ip", "link", "set", "lo", "up")
                if self._rto_max_ms and Path("/proc/sys/net/ipv4/tcp_rto_max_ms").exists():
                    # A per-namespace setting, read when a socket is created: set before anything runs inside.
                    _run(*inside, "sysctl", "-q", "-w", f"net.ipv4.tcp_rto_max_ms={self._rto_max_ms}")

    def partition(self, name: str) -> None:
        """Drop every packet into and out of host ``name`` on its veth (loopback inside it keeps working)."""
        host = self.hosts[name]
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            _run(*host.exec_prefix(), "iptables", "-w", "-I", chain, "1", flag, host.veth_host, "-j", "DROP")
        self._partitioned.add(name)

    def heal(self, name: str) -> None:
        """Remove the DROP rules of :meth:`partition`."""
        host = self.hosts[name]
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            _run(*host.exec_prefix(), "iptables", "-w", "-D", chain, flag, host.veth_host, "-j", "DROP")
        self._partitioned.discard(name)

    def close(self) -> None:
        """Remove the namespaces (their rules and veth ends go with them) and any root-side veth left. Stop the
        processes running inside first: a namespace with a process in it outlives ``ip netns del``."""
        errors = []
        for host in self.hosts.values():
            for command in (("ip", "netns", "del", host.netns), ("ip", "link", "del", host.veth_root)):
                with contextlib.suppress(RuntimeError):
                    _run(*command)
            if Path(f"/run/netns/{host.netns}").exists():
                errors.append(host.netns)
            if Path(f"/sys/class/net/{host.veth_root}").exists():
                errors.append(host.veth_root)
        self.hosts.clear()
        if errors:
            raise RuntimeError(f"could not remove {', '.join(errors)}")
