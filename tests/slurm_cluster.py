"""A real one-node Slurm for the tests: munged, slurmctld and slurmd on this machine, started and stopped here.

Debian's `slurm-wlm` and `munge` packages (installed by `.ci/run` on a fresh machine) give a real cluster:
`SelectType=select/cons_tres`, the node's real CPUs and memory, one partition. Its configuration and state
live in a private directory and are found through `SLURM_CONF`, so the system's Slurm configuration is
never touched and an existing cluster is never disturbed: when `sinfo` already answers, that cluster is
used as it is. Only the processes started here are stopped, by their process ids.

`python -m tests.slurm_cluster start DIR` / `stop DIR` do the same from a shell.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = ("slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel", "scontrol", "srun", "munge", "munged")
PARTITION = "debug"


@dataclass
class Cluster:
    """A running cluster; `started` holds the processes this module started (empty for an existing cluster)."""

    conf: Path | None
    partition: str
    started: list[subprocess.Popen] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)} if self.conf else {}


def missing_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} not found; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    try:
        token = subprocess.run(["munge", "-n"], capture_output=True, timeout=10).stdout
        return subprocess.run(["unmunge"], input=token, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munge(started: list[subprocess.Popen]) -> None:
    if _munge_works():
        return
    for d in ("/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "-c"], check=True, capture_output=True)
    shutil.chown(key, "munge", "munge")
    key.chmod(0o600)
    started.append(subprocess.Popen(["/usr/sbin/munged", "--foreground"], user="munge", group="munge",
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.time() + 20
    while not _munge_works():
        if time.time() > deadline:
            raise RuntimeError("munged did not start (munge -n | unmunge fails)")
        time.sleep(0.2)


def _real_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return max(256, int(total_kb / 1024 * 0.8))


def write_conf(root: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=bench-test",
        f"SlurmctldHost={host}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        "MinJobAge=600",
        "KillWait=5",
        "InactiveLimit=0",
        "DefMemPerCPU=1024",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={_real_memory_mb()} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]), encoding="utf-8")
    return conf


def _sinfo_idle(env: dict[str, str]) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in out.stdout.split())


def existing_partition() -> str | None:
    """The default partition of a cluster that already answers, else None."""
    if shutil.which("sinfo") is None or not _sinfo_idle(dict(os.environ)):
        return None
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=10).stdout.split()
    default = [p for p in out if p.endswith("*")]
    return (default or out)[0].rstrip("*")


def start(root: Path, timeout_s: float = 60) -> Cluster:
    """Use the cluster that answers, else start munged (if needed), slurmctld and slurmd under `root`."""
    partition = existing_partition()
    if partition:
        return Cluster(None, partition)
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    cluster = Cluster(write_conf(root), PARTITION)
    env = {**os.environ, **cluster.env()}
    try:
        _start_munge(cluster.started)
        for daemon in ("slurmctld", "slurmd"):
            log = open(root / "log" / f"{daemon}.out", "w")  # noqa: SIM115 (kept open by the daemon)
            cluster.started.append(subprocess.Popen([f"/usr/sbin/{daemon}", "-D", "-f", str(cluster.conf)],
                                                    stdout=log, stderr=subprocess.STDOUT, env=env))
            time.sleep(1.0)
        deadline = time.time() + timeout_s
        while not _sinfo_idle(env):
            dead = [p.args[0] for p in cluster.started if p.poll() is not None]
            if dead or time.time() > deadline:
                logs = (root / "log" / "slurmctld.log", root / "log" / "slurmd.log")
                tail = " | ".join(p.read_text(errors="replace").strip().splitlines()[-1] for p in logs if p.exists()
                                  and p.read_text(errors="replace").strip())
                raise RuntimeError(f"Slurm did not come up ({', '.join(dead) or 'timeout'}): {tail}")
            time.sleep(0.5)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def stop(cluster: Cluster) -> None:
    """Stop the processes `start` started, newest first, by their process ids."""
    for proc in reversed(cluster.started):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    cluster.started.clear()


if __name__ == "__main__":  # a manual check: start, show sinfo, stop on Enter
    running = start(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench-slurm"))
    print(subprocess.run(["sinfo"], capture_output=True, text=True, env={**os.environ, **running.env()}).stdout)
    print(f"SLURM_CONF={running.conf}; press Enter to stop")
    input()
    stop(running)
