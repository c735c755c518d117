"""Issue 10, item 3: certified training on all 60,000 Fashion-MNIST images and certification of all 10,000 test images.

    python benchmarks/fashion_mnist_certified.py train --models fashion-mnist-runs/certified
    python benchmarks/fashion_mnist_certified.py certify --models fashion-mnist-runs/certified

Two CertCNNs with the same architecture and training budget (RECIPE): one
behind the default Fashion-MNIST codes (`pixdisc.codebook.CERTIFIED_CODEBOOKS`,
chosen by benchmarks/fashion_mnist_sweep.py) trained with `train_certified`, and
one without discretization, trained by plain interval-bound training on the
eps-box (`train_certified(codebook=None)`). `certify` then certifies the
discretized model on every test image at each eps with the default executor
(local processes, one per core) and, at eps 0.1, on a Dask LocalCluster of 2
workers; the plain model is CROWN-verified on the eps-box (the same bound
method certify's root uses). Wall time, images/s and peak memory (resident set
of the process and its workers, sampled every 0.2 s) are recorded with the load
average. Results go to OUT (rewritten after every step; a rerun skips what it
holds), models to MODELS (resumed from per-epoch checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

EPS = (0.05, 0.1)
# How certify's root and node bounds run in this pixdisc: interval bounds on every box, CROWN only on the
# boxes they leave open (same decisions as CROWN everywhere, which the first run of this benchmark used:
# its rows are kept under "disc/default-crown-everywhere/EPS").
ROOT_BOUNDS = "IBP, then CROWN where IBP did not prove"
DASK_EPS = 0.1
RECIPE = {"arch": "cert_cnn", "eps_train": 0.15, "epochs": 20, "warmup_epochs": 1, "ramp_epochs": 6,
          "kappa_end": 0.7, "batch_size": 128, "lr": 1e-3, "lr_milestones": (14, 17)}
BUDGET = {"nodes": 2000, "seconds": 5.0}
# Test images the attack suite runs on (its ceiling beside the certified floor).
N_SUITE = 1000


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


class PeakMemory:
    """Peak resident set of this process plus its children (local certify workers), sampled in a thread."""

    def __init__(self, extra: Callable[[], int] | None = None) -> None:
        import psutil

        self._process = psutil.Process()
        self._extra = extra
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a worker that just exited
                pass
        return total + (self._extra() if self._extra else 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(0.2)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _data():
    from pixdisc.datasets import as_float_nchw, load_fashion_mnist

    data = load_fashion_mnist()
    return data, as_float_nchw(data.x_train), as_float_nchw(data.x_test)


def _codebook(data):
    from pixdisc.codebook import certified_codebook

    return certified_codebook("fashion_mnist", data.x_train)


def _accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float(sum(int((net(torch.from_numpy(x[i:i + 1000])).argmax(1).numpy() == y[i:i + 1000]).sum())
                         for i in range(0, len(x), 1000)) / len(x))


def train(models: Path, out: Path, kinds: tuple[str, ...]) -> None:
    import torch

    import pixdisc
    from pixdisc.models import build_model, load_model, save_model
    from pixdisc.train import train_certified

    data, x_train, x_test = _data()
    book = _codebook(data)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["recipe"] = {**RECIPE, "lr_milestones": list(RECIPE["lr_milestones"])}
    results["codes_255"] = np.rint(book.codes_.ravel() * 255).astype(int).tolist()
    results.setdefault("models", {})
    models.mkdir(parents=True, exist_ok=True)
    for kind, codebook in (("disc", book), ("plain", None)):
        if kind not in kinds:
            continue
        path = models / f"{kind}.pt"
        if not path.exists():
            load = os.getloadavg()[0]
            torch.manual_seed(0)
            started = time.perf_counter()
            net, history = train_certified(
                build_model(RECIPE["arch"]), x_train, data.y_train, codebook, eps=RECIPE["eps_train"],
                epochs=RECIPE["epochs"], warmup_epochs=RECIPE["warmup_epochs"], ramp_epochs=RECIPE["ramp_epochs"],
                kappa_end=RECIPE["kappa_end"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
                lr_milestones=RECIPE["lr_milestones"], checkpoint_path=path.with_suffix(".ckpt"))
            save_model(net, path, meta={"train_seconds": time.perf_counter() - started, "load_before": load,
                                        "torch_threads": torch.get_num_threads(),
                                        "epoch_seconds": history["seconds"]})
        net, meta = load_model(path, return_meta=True)
        evaluated = torch.nn.Sequential(pixdisc.Discretize(book), net).eval() if kind == "disc" else net
        results["models"][kind] = {"clean_accuracy": _accuracy(evaluated, x_test, data.y_test),
                                   "train_seconds": meta["train_seconds"],
                                   "epoch_seconds": meta["epoch_seconds"],
                                   "load_before": meta["load_before"], "torch_threads": meta["torch_threads"]}
        print(kind, json.dumps(results["models"][kind]), flush=True)
        # Two train runs (one per model) may finish in any order: merge into what is on disk now.
        if out.exists():
            on_disk = json.loads(out.read_text())
            results["models"] = {**on_disk.get("models", {}), **results["models"]}
        _save(out, results)


class Paused:
    """SIGSTOP the given processes (other long runs sharing the machine) for a timed step; SIGCONT after."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> None:
        import signal

        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        if self.pids:
            time.sleep(20)  # let the load average settle a little

    def __exit__(self, *exc: Any) -> None:
        import signal

        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)


def timed(body: Callable[[], dict[str, Any]], pause: list[int]) -> dict[str, Any]:
    """Run one timed step with the processes ``pause`` stopped; its row gains load before/after, peak memory
    (process and children) and, when others were paused, how long they were."""
    paused_at = time.perf_counter()
    with Paused(pause):
        load = os.getloadavg()[0]
        with PeakMemory() as memory:
            row = body()
    row.update({"load_before": load, "load_after": os.getloadavg()[0], "peak_rss_mb": memory.peak / 2**20})
    if pause:
        row["paused_others_seconds"] = time.perf_counter() - paused_at
    return row


def _step(results: dict[str, Any], out: Path, key: str, run: Callable[[], dict[str, Any]],
          pause: list[int] | None = None) -> None:
    if key in results["steps"]:
        return
    paused_at = time.perf_counter()
    with Paused(pause or []):
        load = os.getloadavg()[0]
        started = time.perf_counter()
        row = run()
    if pause:
        # The paused runs' own wall times include this.
        row["paused_others_seconds"] = time.perf_counter() - paused_at
    row["seconds"] = row.get("seconds", time.perf_counter() - started)
    row.update({"load_before": load, "load_after": os.getloadavg()[0]})
    results["steps"][key] = row
    print(key, json.dumps(row), flush=True)
    _save(out, results)


def certify_all(models: Path, out: Path, skip_dask: bool, pause: list[int], eps_list: tuple[float, ...]) -> None:
    import torch

    from pixdisc.bounds import certified_by_bounds
    from pixdisc.certification import Budget, certify
    from pixdisc.models import load_model

    data, _, x_test = _data()
    book = _codebook(data)
    results = json.loads(out.read_text())
    results.setdefault("steps", {})
    results["budget"] = BUDGET
    results["cores"] = os.cpu_count()
    disc, plain = load_model(models / "disc.pt"), load_model(models / "plain.pt")
    n = len(x_test)

    def certify_row(eps: float, executor: Any = None, extra: Callable[[], int] | None = None) -> dict[str, Any]:
        checkpoint = models / f"certify-eps{eps:g}-{'dask' if executor is not None else 'default'}.jsonl"
        if checkpoint.exists():
            checkpoint.unlink()  # a timed run starts from nothing
        with PeakMemory(extra) as memory:
            result = certify(disc, book, x_test, data.y_test, eps, mode="bab", bound="crown",
                             budget=Budget(**BUDGET), executor=executor, checkpoint=checkpoint, progress=False)
        s = result.summary()
        return {"eps": eps, "n": s["n"], "root_bounds": ROOT_BOUNDS, "certified": s["certified_rate"],
                "failed": s["failed_rate"],
                "unable": s["unable_rate"], "lower_clopper_pearson": s["lower_clopper_pearson"],
                "seconds": s["wall_seconds"], "images_per_second": s["n"] / s["wall_seconds"],
                "peak_rss_mb": memory.peak / 2**20, "decided_by": s.get("decided_by")}

    def plain_row(eps: float) -> dict[str, Any]:
        started = time.perf_counter()
        proven = 0
        with torch.no_grad(), PeakMemory() as memory:
            for i in range(0, n, 500):
                x, y = torch.from_numpy(x_test[i:i + 500]), torch.from_numpy(data.y_test[i:i + 500])
                lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
                # CROWN (intersected with IBP, as certify's root) proves everything IBP proves: run it on the rest.
                by_ibp = certified_by_bounds(plain, lower, upper, y, method="ibp")
                rest = ~by_ibp
                proven += int(by_ibp.sum())
                if rest.any():
                    proven += int(certified_by_bounds(plain, lower[rest], upper[rest], y[rest], method="crown").sum())
        seconds = time.perf_counter() - started
        return {"eps": eps, "n": n, "verified": proven / n, "seconds": seconds, "images_per_second": n / seconds,
                "peak_rss_mb": memory.peak / 2**20}

    for eps in eps_list:
        _step(results, out, f"disc/default/{eps:g}", lambda: certify_row(eps), pause)
        _step(results, out, f"plain/crown/{eps:g}", lambda: plain_row(eps))
    def suite_row(model: Any, kind: str) -> dict[str, Any]:
        # The floor is only half the story: the strongest attack suite on the same model gives the ceiling.
        import pixdisc
        from pixdisc.evaluation import robustness_interval

        m = N_SUITE
        defended = torch.nn.Sequential(pixdisc.Discretize(book), model).eval() if kind == "disc" else model
        interval = robustness_interval(defended, x_test[:m], data.y_test[:m], DASK_EPS, steps=100, step_size=0.01,
                                       certify_budget=Budget(**BUDGET), certify_all=kind == "disc",
                                       certify_options={"bound": "crown"}, progress=False)
        summary = interval.summary()
        return {"eps": DASK_EPS, "n": m, "attacks": list(interval.attack_names),
                **{key: summary[key] for key in ("floor", "ceiling", "undecided") if key in summary}}

    _step(results, out, f"disc/suite/{DASK_EPS:g}", lambda: suite_row(disc, "disc"))
    _step(results, out, f"plain/suite/{DASK_EPS:g}", lambda: suite_row(plain, "plain"))
    if not skip_dask:
        from distributed import Client, LocalCluster

        def dask_row() -> dict[str, Any]:
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                def workers_rss() -> int:
                    return sum(client.run(lambda: __import__("psutil").Process().memory_info().rss).values())

                row = certify_row(DASK_EPS, executor=client)
                row["workers_rss_mb_after"] = workers_rss() / 2**20
                row["cluster"] = "LocalCluster(n_workers=2, threads_per_worker=1)"
            return row

        _step(results, out, f"disc/dask/{DASK_EPS:g}", dask_row, pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("train", "certify"))
    parser.add_argument("--models", type=Path, default=Path("fashion-mnist-runs/certified"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/fashion_mnist/certified.json"))
    parser.add_argument("--eps", type=float, nargs="+", default=list(EPS), help="certify: the eps to certify at")
    parser.add_argument("--skip-dask", action="store_true", help="certify: no Dask LocalCluster row")
    parser.add_argument("--pause", type=int, nargs="*", default=[], metavar="PID",
                        help="certify: stop these processes (other runs) during the timed certification steps")
    parser.add_argument("--only", choices=("disc", "plain"), default=None,
                        help="train: only this model (run the two side by side)")
    args = parser.parse_args()
    if args.stage == "train":
        train(args.models, args.out, (args.only,) if args.only else ("disc", "plain"))
    else:
        certify_all(args.models, args.out, args.skip_dask, args.pause, tuple(args.eps))


if __name__ == "__main__":
    main()
