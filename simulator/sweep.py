"""Parameter sweeps: the cross product of ``sweep:`` lists × variants, each point a pure task.

A task is a resolved configuration (a plain dict) in, a results record out: no shared state,
so it runs the same in this process, in a process pool, on a Dask or a Ray cluster. Each
point's seed is derived from the base seed and the point's values (variants of a point share
it), so a parallel sweep gives the same counters as a serial one, byte for byte, in
whatever order the points finish. Results are appended to ``results.jsonl`` one line per
finished task (flushed), so an interrupted sweep resumes with only what is missing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.config import ConfigError, Experiment


@dataclass
class Task:
    index: int
    point: dict[str, Any]
    variant: str
    seed: int
    config: dict | None  # the configuration of this point and variant, validated
    skipped: str | None = None  # why an invalid point was skipped (sweep_skip_invalid)

    @property
    def key(self) -> str:
        return task_key(self.point, self.variant)


def task_key(point: dict, variant: str) -> str:
    return json.dumps([point, variant], sort_keys=True)


def derive_seed(seed: int, point: dict) -> int:
    """The seed of a sweep point: the base seed for the empty point, else a stable hash of
    (seed, point) so that every point draws independent streams."""
    if not point:
        return seed
    blob = json.dumps([seed, point], sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def expand(exp: Experiment) -> list[Task]:
    """Every (point, variant) of the experiment, validated up front."""
    sweep = exp.config.sweep
    keys = list(sweep)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]
    tasks: list[Task] = []
    for point in points or [{}]:
        seed = derive_seed(exp.config.seed, point)
        for vname in exp.variants:
            try:
                cfg = exp.variant_config(vname, point, seed)
            except ConfigError as e:
                if not exp.config.sweep_skip_invalid:
                    raise
                tasks.append(Task(len(tasks), point, vname, seed, None,
                                  f"{e.field}: {e.message}"))
                continue
            tasks.append(Task(len(tasks), point, vname, seed, cfg.model_dump(mode="json")))
    return tasks


def run_task(payload: dict) -> dict:
    """The pure task: a resolved configuration in, a results record out."""
    from simulator.config import ExperimentConfig
    from simulator.experiment import run_config

    cfg = ExperimentConfig.model_validate(payload["config"])
    res = run_config(cfg)
    return {
        "point": payload["point"],
        "variant": payload["variant"],
        "seed": payload["seed"],
        "config": payload["config"],
        "counters": res["counters"],
        "sim_cycles": res["sim_cycles"],
        "sim_seconds": res["sim_seconds"],
        "host_seconds": res["host_seconds"],
    }


def _payload(t: Task) -> dict:
    return {"point": t.point, "variant": t.variant, "seed": t.seed, "config": t.config}


def read_done(path: Path) -> dict[str, dict]:
    """Records already in ``results.jsonl`` (a torn last line, from a killed sweep, is
    dropped and the file truncated to the last complete line)."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    good = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                break
            done[task_key(rec["point"], rec["variant"])] = rec
            good += len(raw)
    if good != path.stat().st_size:
        with open(path, "rb+") as f:
            f.truncate(good)
    return done


# ---------------------------------------------------------------------------------------
# backends: each yields result records as tasks finish


def run_serial(payloads: list[dict], fn: Callable[[dict], dict] = run_task) -> Iterable[dict]:
    for p in payloads:
        yield fn(p)


def run_local(payloads: list[dict], workers: int,
              fn: Callable[[dict], dict] = run_task) -> Iterable[dict]:
    """``fn`` (a module-level task) of every payload, in worker processes when ``workers`` >
    1; results as they finish."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if workers <= 1 or len(payloads) <= 1:
        yield from run_serial(payloads, fn)
        return
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(payloads)), mp_context=ctx) as pool:
        futures = [pool.submit(fn, p) for p in payloads]
        for fut in as_completed(futures):
            yield fut.result()


def run_dask(payloads: list[dict], workers: int, address: str | None) -> Iterable[dict]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ConfigError("--backend", "dask", "needs the dask extra: pip install "
                          "'mmusim[dask]'") from None
    cluster = None
    if address:
        client = Client(address)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(run_task, payloads, pure=False)
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_ray(payloads: list[dict], workers: int, address: str | None) -> Iterable[dict]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend", "ray", "needs the ray extra: pip install "
                          "'mmusim[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else workers,
                 include_dashboard=False, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(run_task)
        pending = [remote.remote(p) for p in payloads]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


def run_sweep(exp: Experiment, out: Path, *, workers: int | None = None, backend: str = "local",
              address: str | None = None, resume: bool = False,
              progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Run every missing task of ``exp``; returns all records in task order."""
    tasks = expand(exp)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "results.jsonl"
    if resume:
        done = read_done(jsonl)
    else:
        done = {}
        jsonl.write_text("")
    with open(jsonl, "a") as f:
        for t in tasks:
            if t.skipped is not None and t.key not in done:
                rec = {"point": t.point, "variant": t.variant, "seed": t.seed,
                       "skipped": t.skipped}
                f.write(json.dumps(rec, sort_keys=True) + "\n")
                done[t.key] = rec
    todo = [t for t in tasks if t.key not in done]
    workers = workers or os.cpu_count() or 1
    payloads = [_payload(t) for t in todo]
    if backend == "local":
        stream = run_local(payloads, workers)
    elif backend == "dask":
        stream = run_dask(payloads, workers, address)
    elif backend == "ray":
        stream = run_ray(payloads, workers, address)
    else:
        raise ConfigError("--backend", backend, "expected local, dask or ray")
    n_done = len(tasks) - len(todo)
    if progress:
        progress(n_done, len(tasks))
    with open(jsonl, "a") as f:
        for rec in stream:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            done[task_key(rec["point"], rec["variant"])] = rec
            n_done += 1
            if progress:
                progress(n_done, len(tasks))
    records = [done[t.key] for t in tasks]
    write_aggregate(out, exp, records)
    return records


def aggregate_rows(exp: Experiment, records: list[dict]) -> tuple[list[str], list[list]]:
    keys = list(exp.config.sweep)
    records = [r for r in records if "skipped" not in r]
    counters = sorted({k for r in records for k in r["counters"]})
    header = [*keys, "variant", "seed", "sim_cycles", "sim_seconds", *counters]
    rows = []
    for r in records:
        rows.append([*(json.dumps(r["point"].get(k)) if isinstance(r["point"].get(k), (list, dict))
                       else r["point"].get(k) for k in keys),
                     r["variant"], r["seed"], r["sim_cycles"], r["sim_seconds"],
                     *(r["counters"].get(c, "") for c in counters)])
    return header, rows


def write_aggregate(out: Path, exp: Experiment, records: list[dict]) -> None:
    """``sweep.csv`` (and ``sweep.parquet`` when pyarrow is installed), in task order."""
    from simulator.results.report import atomic_write_files

    header, rows = aggregate_rows(exp, records)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_files(out, {"sweep.csv": buf.getvalue()})
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    cols = {h: [row[i] for row in rows] for i, h in enumerate(header)}
    pq.write_table(pa.table({k: [None if v == "" else v for v in vals]
                             for k, vals in cols.items()}), out / "sweep.parquet")
