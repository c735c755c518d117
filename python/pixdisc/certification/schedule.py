"""The ``certify`` driver: checks inputs, shards samples over executors, streams records to the checkpoint."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..candidates import resolve_rule
from ..codebook import Codebook
from ..inputs import as_images, as_labels, check_eps, split_defended
from .checkpoint import _Checkpoint, _fingerprint, _model_fingerprint
from .engine import _Engine, _run_chunk
from .result import BOUNDS, MODES, OUTCOMES, Budget, CertifyResult, _Record
from .workers import WorkersUnavailable, run_on_workers


def _run_local(engine: _Engine, x: np.ndarray, y: np.ndarray, indices: np.ndarray, threads: int,
               on_record: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
    """Certify one chunk; ``on_record`` gets each JSON record as soon as its sample is decided."""
    if threads > 0:
        torch.set_num_threads(threads)
    send = None if on_record is None else (lambda record: on_record(record.to_json()))
    return [r.to_json() for r in engine.certify_samples(engine.prepare(x, y, indices), on_record=send)]


def _stream(futures: List[concurrent.futures.Future], records: Any, consume: Callable[[List[Dict]], None]) -> None:
    """Consume records from ``records`` as workers decide them, and each task's full result as it ends."""
    pending = set(futures)
    while pending:
        try:
            consume([records.get(timeout=0.05)])
            continue
        except queue.Empty:
            pass
        for future in [f for f in pending if f.done()]:
            pending.discard(future)
            consume(future.result())  # records that raced past the queue; duplicates are dropped
    _drain(records, consume)


def _drain(records: Any, consume: Callable[[List[Dict]], None]) -> None:
    while True:
        try:
            consume([records.get_nowait()])
        except (queue.Empty, OSError, ValueError):  # empty, or a queue already closed
            return


def _iterate_results(executor: Any, tasks: List[Tuple]) -> Iterator[List[Dict]]:
    """Run `_run_chunk(*task)` for every task on the executor, yielding results as they finish."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover
        Client = None  # type: ignore[assignment,misc]
    if Client is not None and isinstance(executor, Client):
        from distributed import as_completed

        futures = [executor.submit(_run_chunk, *task, pure=False) for task in tasks]
        for future in as_completed(futures):
            yield future.result()
        return
    futures = [executor.submit(_run_chunk, *task) for task in tasks]
    for future in concurrent.futures.as_completed(futures):
        yield future.result()


def certify(
    model: nn.Module,
    codebook: Optional[Codebook],
    x: Any,
    y: Any,
    eps: float,
    mode: str = "bab",
    b: float = 30,
    bound: str = "crown",
    budget: Optional[Budget] = None,
    batch_size: int = 256,
    executor: Any = None,
    checkpoint: Union[str, os.PathLike, None] = None,
    delta: float = 0.01,
    rule: str = "auto",
    chunk_size: int = 64,
    workers: Optional[int] = None,
    device: str = "cpu",
    progress: bool = True,
) -> CertifyResult:
    """Certify ``F(T(x)) == y`` against every l_inf perturbation of size ``eps``.

    ``model`` is the classifier F on discretized images (or a
    ``Sequential(Discretize(cb), F)``, whose codebook is then used). ``x`` is
    NCHW (float in [0, 1], or uint8), ``y`` integer labels. ``executor``:
    ``None`` runs on local processes (``workers``, default all cores; inline
    for a single chunk), ``"processes"`` always on local processes,
    ``"serial"`` in this process, or any
    ``concurrent.futures.Executor`` / Dask ``distributed.Client``. The local
    processes never run the main script's code, so scripts need no ``if
    __name__ == "__main__":`` guard; a model whose class they cannot rebuild
    (defined in a notebook, or in a script that runs code outside that guard)
    is certified in this process instead, the reason printed to stderr
    (``"processes"`` raises it).
    ``checkpoint`` names a JSON-lines file that records every finished sample;
    an existing one is resumed (it must come from the same model, codes, data
    and settings).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    eps = check_eps(eps)
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be positive")
    budget = budget or Budget()
    defense, net = split_defended(model)
    if codebook is None and defense is not None:
        codebook = defense.codebook
    if codebook is None:
        raise ValueError("pass the codebook (or a model whose first layer is pixdisc.Discretize)")
    rule = resolve_rule(rule, codebook)
    x = np.ascontiguousarray(as_images(x, min_ndim=3, dtype=torch.float32).detach().cpu().numpy())
    y = as_labels(y, x.shape[0]).cpu().numpy()
    net = net.eval().to(device)
    # Built before any checkpoint is opened: the engine refuses a codebook whose channels fit no image
    # (pixdisc.inputs.check_channels).
    engine = _Engine(net, codebook, eps, mode, float(b), bound, rule, budget, batch_size, tuple(x.shape[1:]),
                     device)
    config = {"eps": eps, "mode": mode, "b": float(b), "bound": bound, "rule": rule,
              "budget": asdict(budget), "n": int(x.shape[0])}
    started = time.monotonic()
    records: Dict[int, _Record] = {}
    store = None
    if checkpoint is not None:
        header = {**config, "model": _model_fingerprint(net), "codes": _fingerprint(codebook.codes_),
                  "data": _fingerprint(x, y)}
        store = _Checkpoint(Path(checkpoint), header)
        records.update(store.done)
    todo = np.array([i for i in range(x.shape[0]) if i not in records], dtype=np.int64)
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    if isinstance(executor, str) and executor not in ("serial", "processes"):
        raise ValueError(f"executor must be None, 'serial', 'processes', an Executor or a Dask Client, "
                         f"got {executor!r}")
    bar = _progress(progress, x.shape[0])
    _tally(bar, records.values())

    def consume(new_records: List[Dict]) -> None:
        # Each record reaches the checkpoint (fsync'd) as soon as its sample is decided; repeats are dropped.
        fresh = [r for r in new_records if int(r["index"]) not in records]
        if not fresh:
            return
        if store is not None:
            store.append(fresh)
        new = [_Record.from_json(r) for r in fresh]
        records.update((r.index, r) for r in new)
        _tally(bar, new)

    def run_here(reason: str = "") -> None:
        if reason:
            print(f"pixdisc.certify: running in this process: {reason}", file=sys.stderr, flush=True)
        left = np.array([i for i in todo if int(i) not in records], dtype=np.int64)
        for start in range(0, len(left), chunk_size):
            c = left[start : start + chunk_size]
            consume(_run_local(engine, x[c], y[c], c, 0, lambda record: consume([record])))

    try:
        if executor == "serial" or (executor is None and len(chunks) <= 1):
            run_here()
            return _result(records, x, config, delta, started)
        cpu_engine = engine if device == "cpu" else _Engine(net.cpu(), codebook, eps, mode, float(b),
                                                             bound, rule, budget, batch_size,
                                                             tuple(x.shape[1:]), "cpu")
        if executor is None or executor == "processes":
            reason = _run_on_processes(cpu_engine, x, y, chunks, workers or os.cpu_count() or 1, consume)
            if reason:
                if executor == "processes":
                    raise ValueError(f"executor='processes' cannot run this model: {reason}; pass "
                                     "executor='serial' (or the default, which then runs in this process)")
                run_here(reason)
        elif isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            # Threads share this process: records stream back through a plain queue.
            stream: queue.Queue = queue.Queue()
            _stream([executor.submit(_run_local, cpu_engine, x[c], y[c], c, 1, stream.put) for c in chunks],
                    stream, consume)
        else:
            # Other executors (Dask, a caller's process pool) return records a chunk at a time.
            for chunk_records in _iterate_results(executor, [(cpu_engine, x[c], y[c], c, 1) for c in chunks]):
                consume(chunk_records)
    finally:
        if bar is not None:
            bar.close()
    return _result(records, x, config, delta, started)


def _run_on_processes(engine: _Engine, x: np.ndarray, y: np.ndarray, chunks: List[np.ndarray], workers: int,
                      consume: Callable[[List[Dict]], None]) -> str:
    """Certify the chunks on worker processes (which never run the main script's code); returns why it could
    not ("" when it did). Records stream back as samples are decided; a worker that dies raises WorkerDied."""
    try:
        run_on_workers(_run_local, engine, [(x[c], y[c], c, 1) for c in chunks], workers, consume)
    except WorkersUnavailable as exc:
        return str(exc)
    return ""


def _result(records: Dict[int, _Record], x: np.ndarray, config: Dict[str, Any], delta: float,
            started: float) -> CertifyResult:
    ordered = [records[i] for i in range(x.shape[0])]
    return CertifyResult(
        outcome=np.array([r.outcome for r in ordered], dtype="<U9"),
        log2_size=np.array([r.log2_size for r in ordered]),
        n_ambiguous=np.array([r.n_ambiguous for r in ordered], dtype=np.int64),
        nodes=np.array([r.nodes for r in ordered], dtype=np.int64),
        seconds=np.array([r.seconds for r in ordered]),
        verified=np.array([r.verified for r in ordered], dtype=bool),
        z_codes={r.index: r.z_codes for r in ordered if r.z_codes is not None},
        counterexample={r.index: r.counterexample.reshape(x.shape[1:]) for r in ordered if r.counterexample is not None},
        config=config,
        delta=delta,
        wall_seconds=time.monotonic() - started,
        method=np.array([r.method for r in ordered], dtype=object),
        reason=np.array([r.reason for r in ordered], dtype=object),
        tier=np.array([r.tier for r in ordered], dtype=object),
        work=np.array([r.work for r in ordered]),
    )


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="certify", unit="img")


def _tally(bar: Any, new: Iterable[_Record]) -> None:
    if bar is None:
        return
    new = list(new)
    counts = getattr(bar, "_pixdisc_counts", {o: 0 for o in OUTCOMES})
    for r in new:
        counts[r.outcome] += 1
    bar._pixdisc_counts = counts
    bar.set_postfix(counts, refresh=False)
    bar.update(len(new))
