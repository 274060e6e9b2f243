"""Where a sweep's runs execute: a Dask ``distributed`` cluster, described by a sweep spec's ``cluster:`` section.

``mckd_lab.experiments.sweep`` says *what* runs; this module says *where*, so that one spec works on a laptop,
a batch system and Kubernetes. Every run is one Dask task; a worker holds one run at a time (the Dask resource
``run=1`` on the workers started here), and the run's kernel or trainer gets the worker's cores as threads.

Kinds (``kind:``, or ``mckd-lab sweep --cluster KIND``)::

    local       default: an embedded LocalCluster on this machine (worker processes, restarted when killed).
                ``workers`` processes share ``cores`` (default: every core Dask sees) without oversubscribing
                them: each run gets ``cores // workers`` threads (fewer if ``OMP_NUM_THREADS`` says so).
                Default ``workers``: Dask's own split of the cores into processes x threads, and never more
                than the runs to do.
    slurm, pbs, sge, lsf
                dask-jobqueue: ``workers`` batch jobs (default: one per run to do), each one worker process
                holding one run at a time on ``cores`` cores, ``memory``, ``walltime``, ``queue``, ``account``,
                ``gpus`` (a ``--gres=gpu:N`` or equivalent directive), ``job_extra`` (more directives, the
                site's own), ``prologue`` (shell lines before the worker starts, e.g. ``module load``) and
                ``interface`` (the network interface the scheduler listens on, e.g. ``ib0``). Job logs go to
                ``<out>/dask-logs``.
    kubernetes  dask-kubernetes (the optional extra ``mckd-lab[kubernetes]``; the Dask operator must run in the
                cluster): ``workers`` pods of ``image`` (one with mckd-lab installed) with ``cores``,
                ``memory``, ``gpus``; ``custom_spec`` a DaskCluster manifest (YAML) when the pods need more,
                e.g. the volume that holds the sweep's ``out``.

``scheduler: tcp://HOST:PORT`` (``--scheduler``) joins a cluster that is already running instead; its workers
then run as many runs at once as they have threads (start them with ``--nthreads 1``), and its own
``distributed.scheduler.allowed-failures`` is the scheduler's bound on worker deaths.

Outputs go to the sweep's ``out`` folder, which every worker must see at the same path (a shared file
system on a batch system or in the pods). A worker that dies mid-run has its run started again on another
worker; the scheduler gives a run up after ``allowed-failures`` worker deaths (a bound the sweep sets above
its own count of a run's attempts, ``mckd_lab.experiments``).

Workers that die are replaced by Dask itself: a local worker's nanny restarts its process, and the sweep calls
`Workers.revive` (the cluster's own ``scale``, which starts the workers its spec names that are gone) while
fewer workers than it asked for are connected, e.g. a batch job pre-empted. Dask's SpecCluster closes a worker
that has not come back within ``distributed.deploy.lost-worker-timeout`` (15 s by default, meant for lost
batch jobs): on a busy machine a nanny's restart takes longer than that, and closing the nanny then killed the
restarted worker and left the LocalCluster with fewer workers, down to none, and a sweep waiting forever
(any finite timeout races: a timer left by an earlier death fires while a later restart is under way, and
closes a worker that had come back). A local cluster therefore never closes its nannies
(`LOCAL_LOST_WORKER_TIMEOUT`); one that gave up restarting its worker is replaced by `Workers.revive`; and
its scheduler has ``distributed.scheduler.no-workers-timeout`` (`LOCAL_NO_WORKERS_TIMEOUT`, unless set in the
Dask config): a run that waits that long with no worker alive fails with Dask's ``NoWorkerError``, which the
sweep reports, with the runs not started yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["BATCH", "KINDS", "ClusterSpec", "Workers", "connect"]

BATCH = ("slurm", "pbs", "sge", "lsf")
KINDS = ("local", *BATCH, "kubernetes")
RUN = {"run": 1}  # the Dask resource each run takes: one run at a time on a worker started here
# the usual GPU request of each batch system; a site that spells it otherwise gives ``job_extra`` instead
GPU_DIRECTIVE = {"slurm": "--gres=gpu:{}", "pbs": "-l ngpus={}", "sge": "-l gpu={}", "lsf": '-gpu "num={}"'}
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
LOCAL_LOST_WORKER_TIMEOUT = "86400s"  # SpecCluster never closes a local nanny: it restarts its worker (Dask: 15 s)
LOCAL_NO_WORKERS_TIMEOUT = "180s"  # no local worker alive for this long: the waiting runs fail (Dask: never)


@dataclass(frozen=True)
class ClusterSpec:
    """A sweep spec's ``cluster:`` section (see the module docstring); None: the kind's default."""

    kind: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    gpus: int = 0
    interface: str | None = None
    prologue: tuple[str, ...] = ()
    job_extra: tuple[str, ...] = ()
    image: str | None = None
    custom_spec: str | None = None

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any] | None, where: str = "cluster", base: Path | None = None
    ) -> ClusterSpec:
        """Read a ``cluster:`` section; unknown keys and kinds are refused, naming the allowed ones. A relative
        ``custom_spec`` is relative to ``base`` (the spec file's folder)."""
        raw = dict(raw or {})
        allowed = {f.name for f in fields(cls)}
        if extra := set(raw) - allowed:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        for key in ("prologue", "job_extra"):
            if isinstance(raw.get(key), str):
                raw[key] = [raw[key]]
            raw[key] = tuple(raw.get(key) or ())
        if raw.get("custom_spec") and base is not None:
            raw["custom_spec"] = str((base / raw["custom_spec"]).resolve())
        return cls().with_options(**raw, where=where)

    def with_options(self, where: str = "cluster", **options) -> ClusterSpec:
        """A copy with the options that are not None (command-line flags over the spec's section), checked."""
        spec = replace(self, **{k: v for k, v in options.items() if v is not None})
        if spec.kind not in KINDS:
            raise ValueError(f"{where}: kind {spec.kind!r} is not one of {', '.join(KINDS)}")
        for key in ("workers", "cores"):
            value = getattr(spec, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
        if not isinstance(spec.gpus, int) or isinstance(spec.gpus, bool) or spec.gpus < 0:
            raise ValueError(f"{where}: gpus must be a whole number >= 0, got {spec.gpus!r}")
        if spec.scheduler is not None and not str(spec.scheduler).strip():
            raise ValueError(f"{where}: scheduler must be an address such as tcp://HOST:8786")
        return spec


@dataclass
class Workers:
    """A connected Dask client, how to submit a run to it and the threads each run may use.

    ``resources`` is what a run asks of a worker (None on a cluster joined by address, whose workers
    declare none); ``threads`` the OMP/MKL/torch threads of one run (None: leave the environment as it is).
    """

    client: Any
    resources: dict[str, int] | None
    threads: int | None
    description: str
    cluster: Any = None  # a Dask SpecCluster started here (LocalCluster, dask-jobqueue), scaled by revive
    size: int = 0  # the workers asked of it
    starting: set = field(default_factory=set)  # the names of the workers revive started, until they are up

    def slots(self) -> int:
        """How many runs the connected workers hold at once now: one per worker started here, one per
        thread on a cluster joined by address."""
        nthreads = self.client.nthreads()
        return len(nthreads) if self.resources else sum(nthreads.values())

    def revive(self) -> None:
        """Replace, through the cluster's own ``scale``, the workers that Dask closed after they died (a
        nanny whose restart outlasted ``lost-worker-timeout``, a batch job that ended): SpecCluster drops
        such a worker from ``cluster.workers`` but keeps its entry in ``cluster.worker_spec``, and starts
        nothing in its place. The entry is replaced by a ``new_worker_spec()`` under a new name (the closed
        one may still be shutting down, holding its name at the scheduler) and ``scale`` starts it; so is a
        worker object that closed itself (``scale`` closes it again, harmlessly). A no-op while none is."""
        if self.cluster is None:
            return
        self.starting &= set(self.cluster.worker_spec) - set(self.cluster.workers)  # not up yet
        closed = set(self.cluster.worker_spec) - set(self.cluster.workers) - self.starting
        closed |= {name for name, worker in self.cluster.workers.items()  # e.g. a nanny whose restart failed
                   if str(getattr(worker, "status", "")) in ("Status.closed", "Status.failed")}  # fmt: skip
        if closed and len(self.client.nthreads()) < self.size:
            for name in closed:  # the new name first: new_worker_spec takes the first name not in the spec
                self.cluster.worker_spec.update(self.cluster.new_worker_spec())
                del self.cluster.worker_spec[name]
            self.cluster.scale(self.size)
            self.starting |= set(self.cluster.worker_spec) - set(self.cluster.workers)


@contextmanager
def connect(spec: ClusterSpec, runs: int, allowed_failures: int, logs: Path) -> Iterator[Workers]:
    """Start (or join) the cluster ``spec`` describes for ``runs`` runs; closed again on exit.

    ``allowed_failures``: the scheduler's ``allowed-failures``, the worker deaths after which it gives a task
    up (not settable on a cluster joined by address). ``logs``: the batch jobs' output.
    """
    from distributed import Client

    if spec.scheduler:
        with Client(spec.scheduler) as client:
            yield Workers(client, None, None, f"the cluster at {spec.scheduler}")
        return
    if spec.kind == "local":
        import dask

        # set for the whole sweep: SpecCluster reads lost-worker-timeout each time a worker leaves
        no_workers = dask.config.get("distributed.scheduler.no-workers-timeout", None) or LOCAL_NO_WORKERS_TIMEOUT
        with dask.config.set({"distributed.deploy.lost-worker-timeout": LOCAL_LOST_WORKER_TIMEOUT,
                              "distributed.scheduler.no-workers-timeout": no_workers}):  # fmt: skip
            cluster, threads, what = _local(spec, runs, allowed_failures)
            with cluster, Client(cluster) as client:
                yield Workers(client, RUN, threads, what, cluster, len(cluster.worker_spec))
        return
    if spec.kind in BATCH:
        cluster, threads, what = _jobqueue(spec, runs, allowed_failures, logs)
        size = len(cluster.worker_spec)
    else:  # the Dask operator keeps the pods of its worker group itself
        cluster, threads, what = _kubernetes(spec, runs, allowed_failures)
        size = 0
    with cluster, Client(cluster) as client:
        yield Workers(client, RUN, threads, what, cluster if size else None, size)


def _local(spec: ClusterSpec, runs: int, allowed_failures: int):
    """A LocalCluster of worker processes that together use ``cores`` threads at most."""
    from dask.system import CPU_COUNT
    from distributed import LocalCluster
    from distributed.deploy.utils import nprocesses_nthreads

    cores = spec.cores or CPU_COUNT
    workers = spec.workers or max(1, min(runs, nprocesses_nthreads(cores)[0]))
    threads = max(1, cores // workers)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # a user's cap (a busy shared machine) holds
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        resources=RUN,
        scheduler_kwargs={"allowed_failures": allowed_failures},
    )
    return cluster, threads, f"a LocalCluster of {workers} worker(s), {threads} thread(s) per run"


def job_cluster(spec: ClusterSpec, allowed_failures: int, logs: Path):
    """The dask-jobqueue cluster object of a batch ``spec`` (no job submitted yet: ``scale`` does that).
    Its ``job_script()`` is the script each batch job runs."""
    import dask_jobqueue

    cores = spec.cores or 1
    directives = list(spec.job_extra)
    if spec.gpus:
        directives.append(GPU_DIRECTIVE[spec.kind].format(spec.gpus))
    options = {
        "cores": cores,
        "processes": 1,
        "memory": spec.memory or "4GB",
        "queue": spec.queue,
        "account": spec.account,
        "walltime": spec.walltime,
        "interface": spec.interface,
        "job_extra_directives": directives,
        "job_script_prologue": list(spec.prologue),
        "worker_extra_args": ["--resources", ",".join(f"{k}={v}" for k, v in RUN.items())],
        "scheduler_options": {"allowed_failures": allowed_failures},
        "log_directory": str(logs),
    }
    return getattr(dask_jobqueue, JOBQUEUE[spec.kind])(**{k: v for k, v in options.items() if v is not None})


def _jobqueue(spec: ClusterSpec, runs: int, allowed_failures: int, logs: Path):
    logs.mkdir(parents=True, exist_ok=True)
    cluster = job_cluster(spec, allowed_failures, logs)
    jobs = spec.workers or runs
    cluster.scale(jobs=jobs)
    cores = spec.cores or 1
    return cluster, cores, f"{spec.kind} ({jobs} job(s) of {cores} core(s), {spec.memory or '4GB'})"


def _kubernetes(spec: ClusterSpec, runs: int, allowed_failures: int):
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        raise ImportError(
            "--cluster kubernetes needs dask-kubernetes, which is an optional extra: "
            "pip install 'mckd-lab[kubernetes]' (and the Dask operator running in the Kubernetes cluster)"
        ) from None
    if not spec.image and not spec.custom_spec:
        raise ValueError(
            "cluster kind kubernetes needs an image with mckd-lab installed (cluster: image: ...)"
        )
    requests = {"cpu": str(spec.cores or 1), **({"memory": spec.memory} if spec.memory else {})}
    limits = {**requests, **({"nvidia.com/gpu": str(spec.gpus)} if spec.gpus else {})}
    pods = spec.workers or runs
    cluster = KubeCluster(
        name="mckd-sweep-{uuid}",
        image=spec.image,
        n_workers=pods,
        resources={"requests": requests, "limits": limits},
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)},
        worker_command=["dask", "worker", "--resources", ",".join(f"{k}={v}" for k, v in RUN.items())],
        custom_cluster_spec=spec.custom_spec,
    )
    return cluster, spec.cores or 1, f"kubernetes ({pods} pod(s) of {spec.cores or 1} core(s))"
