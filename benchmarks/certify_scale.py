"""Certification cost against network size: bound tiers on the root box, certify under one work budget, the MILP stage.

    python benchmarks/certify_scale.py                        # every network; models are trained first (cached)
    python benchmarks/certify_scale.py --only resnet18        # one network (the others' rows are kept)
    python benchmarks/certify_scale.py --render-only          # OUT.md from OUT.json
    python benchmarks/certify_scale.py --train-only           # train the cached models only (untimed)
    python benchmarks/certify_scale.py --only mlp --quick     # a smoke test: few images, written under MODELS

Six networks, each trained briefly by plain natural training (`pixdisc.train.train_model`, Adam 1e-3, batch
128, seed 0) on the discretized MNIST-5k training images: MLP, CertCNN, SmallCNN and MadryMNIST on the
1x28x28 digits behind the paper's k=2 density codes (`DensityCodebook(2, 0.6)`, {0, 253}/255) at eps 0.1;
PreAct ResNet-10 (width 16) and ResNet-18 (width 64) on an RGB 32x32 stand-in built from the same digits
(no CIFAR data here; see `rgb_standin`) behind 8 RGB density codes (`DensityCodebook(8, 0.3)`, linf,
Algorithm 1 on the stand-in's training pixels) at eps 2/255, where a digit has about as many ambiguous
pixels (15 on average) as an MNIST digit at eps 0.1 (16). The point is a realistic trained network of each
size, not accuracy.

Per network, on the first test images (the same for every step):

1. tiers: each bound tier (`pixdisc.bounds.TIERS`) run alone (`escalate(first=tier, top=tier)`, float64 as
   certify runs it) on the root box of S(x) (`pixdisc.candidates.box_hull`: per pixel the min/max code of
   its candidate set, what certify bounds first), image by image with a wall deadline of DEADLINE seconds
   (`Meter(deadline=...)`). Mean seconds and work (forward passes of one image, `Meter.spent`) per image,
   and how many root boxes the tier proves. A tier that runs out on an image is reported as "> DEADLINE s"
   and not run on the rest; the tiers after it, which compute everything it computes and more, are then
   not run either.
2. certify: `certify(bound="crown", budget=Budget(nodes=NODES, seconds=None, work=WORK), executor="serial")`,
   one work budget for every network, so outcomes do not depend on machine load; certified / failed /
   unable, mean and max seconds per image, peak resident set of the process (sampled every 0.1 s by a
   thread; it includes the model, data and Python itself, so the baseline before the step is recorded too).
3. wall: the same images under `Budget(nodes=NODES, seconds=WALL_SECONDS)` (wall clock, no work limit):
   the slowest image's seconds, which must stay within WALL_SECONDS + max(1 s, 10%).
4. milp (Sequential networks, not the ResNets): the exact stage's cost on the first MILP images. Twice
   `certify(budget=Budget(nodes=0, seconds=None, work=MILP_WORK, exact_seconds=...))`, with the exact stage
   on (EXACT_SECONDS of HiGHS per image) and off: MILP_WORK pays for IBP and CROWN-IBP at the root of every
   network here, and CROWN then runs out, so every image the cheap tiers leave open goes to the MILP. The
   difference of the two runs is the MILP stage's time; it reports how many images reached it and how many
   it decided.

OUT.json is rewritten after every step; a rerun skips the steps it holds with the same settings
(resumable, and `--only` runs fill in one network at a time). The load average is recorded before and
after every timed step, and torch's thread count with every row (`--threads` sets it). OUT.md is rendered
from the JSON by `render`, which benchmarks/readme_tables.py can call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

TIERS = ("ibp", "crown-ibp", "crown", "alpha-crown")  # pixdisc.bounds.TIERS, here so render needs no torch
TIER_NAMES = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "alpha-crown": "alpha-CROWN"}
MNIST_EPS = 0.1
RGB_EPS = 2 / 255
# Budget of the certify step, the same for every network: forward passes of one image, per image.
WORK = 2000.0
NODES = 2000
DEADLINE = 60.0  # seconds per image for a tier run alone
WALL_SECONDS = 10.0  # the wall-clock budget whose overrun the "wall" step measures (issue 17: <= 11 s)
# MILP step: HiGHS seconds per image, and a work budget that IBP and CROWN-IBP fit in (at most ~20 forward
# passes at the root of these networks) but CROWN (hundreds) does not.
EXACT_SECONDS = 10.0
MILP_WORK = 50.0
# The RGB stand-in: channel c is the digit (padded 28 -> 32) shifted by SHIFT pixels down and right and
# scaled by SCALE, so the channels differ in place and brightness (colour fringes where they part).
RGB_CHANNELS = ((0, 1.0), (1, 0.75), (2, 0.5))  # (SHIFT, SCALE) per channel
TRAIN = {"batch_size": 128, "lr": 1e-3, "seed": 0}

# name -> architecture, data, epochs, images for the tiers / certify / MILP steps (full, --quick).
NETS: Dict[str, Dict[str, Any]] = {
    "mlp": {"label": "MLP 784-256-256-10", "arch": "mlp", "kwargs": {}, "data": "mnist", "epochs": 5,
            "images": {"tiers": 16, "certify": 100, "milp": 20}, "quick": {"tiers": 2, "certify": 10, "milp": 3}},
    "cert_cnn": {"label": "CertCNN", "arch": "cert_cnn", "kwargs": {}, "data": "mnist", "epochs": 5,
                 "images": {"tiers": 8, "certify": 50, "milp": 20}, "quick": {"tiers": 2, "certify": 5, "milp": 3}},
    "small_cnn": {"label": "SmallCNN", "arch": "small_cnn", "kwargs": {}, "data": "mnist", "epochs": 5,
                  "images": {"tiers": 8, "certify": 50, "milp": 10}, "quick": {"tiers": 2, "certify": 5, "milp": 3}},
    "madry_mnist": {"label": "MadryMNIST", "arch": "madry_mnist", "kwargs": {}, "data": "mnist", "epochs": 5,
                    "images": {"tiers": 4, "certify": 20, "milp": 10},
                    "quick": {"tiers": 1, "certify": 3, "milp": 2}},
    "resnet10": {"label": "PreAct ResNet-10 (width 16)", "arch": "cifar_resnet", "kwargs": {"depth": 10, "width": 16},
                 "data": "rgb", "epochs": 4, "images": {"tiers": 4, "certify": 8}, "quick": {"tiers": 1, "certify": 2}},
    "resnet18": {"label": "PreAct ResNet-18 (width 64)", "arch": "cifar_resnet", "kwargs": {"depth": 18, "width": 64},
                 "data": "rgb", "epochs": 3, "images": {"tiers": 4, "certify": 4}, "quick": {"tiers": 1, "certify": 1}},
}


def _save(path: Path, data: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _load() -> float:
    return os.getloadavg()[0]


class PeakMemory:
    """Peak resident set of this process, sampled every 0.1 s in a thread (certify runs in-process here)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.1)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    def row(self) -> Dict[str, float]:
        return {"peak_rss_mb": self.peak / 2**20, "baseline_rss_mb": self.baseline / 2**20}


def rgb_standin(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28, 1) digits -> uint8 (N, 32, 32, 3): padded by 2, channel c shifted and scaled (RGB_CHANNELS).

    MNIST digits keep a 4-pixel blank border, so shifts of up to 2 pixels (np.roll) never wrap ink around.
    """
    padded = np.pad(images[..., 0], ((0, 0), (2, 2), (2, 2)))
    return np.stack([np.rint(np.roll(padded, (shift, shift), axis=(1, 2)) * scale).astype(np.uint8)
                     for shift, scale in RGB_CHANNELS], -1)


class Data:
    """The two data sets and codebooks, built on first use."""

    def __init__(self) -> None:
        self._cache: Dict[str, Dict[str, Any]] = {}

    def __call__(self, kind: str) -> Dict[str, Any]:
        if kind not in self._cache:
            import pixdisc
            from pixdisc.datasets import as_float_nchw, load_mnist5k

            mnist = load_mnist5k()
            if kind == "mnist":
                x_train, x_test, eps = mnist.x_train, mnist.x_test, MNIST_EPS
                book = pixdisc.DensityCodebook(2, 0.6).fit(x_train)
                codebook = "DensityCodebook(2, 0.6) (the paper's Algorithm 1)"
            else:
                x_train, x_test, eps = rgb_standin(mnist.x_train), rgb_standin(mnist.x_test), RGB_EPS
                book = pixdisc.DensityCodebook(8, 0.3).fit(x_train)
                codebook = "DensityCodebook(8, 0.3), linf, fitted on the stand-in's training pixels"
            train = as_float_nchw(x_train)
            self._cache[kind] = {
                "book": book, "eps": eps, "codebook": codebook,
                "codes_255": np.rint(book.codes_ * 255).astype(int).tolist(),
                # Natural training on T(x): what the network sees behind Discretize.
                "x_train": np.ascontiguousarray(book.transform(train, channel_axis=1)), "y_train": mnist.y_train,
                "x_test": as_float_nchw(x_test), "y_test": mnist.y_test,
            }
        return self._cache[kind]


def train_or_load(name: str, spec: Dict[str, Any], models: Path, data: Dict[str, Any]):
    """The network from MODELS/NAME.pt, or trained and saved there (resumes from NAME.ckpt)."""
    import torch

    from pixdisc.models import build_model, load_model, save_model
    from pixdisc.train import train_model

    path = models / f"{name}.pt"
    if not path.exists() or load_model(path, return_meta=True)[1].get("epochs") != spec["epochs"]:
        models.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net = build_model(spec["arch"], in_channels=data["x_train"].shape[1], **spec["kwargs"])
        load = _load()
        # Resumes the checkpoint of a shorter run of the same recipe (more epochs), and a killed one.
        net, history = train_model(net, data["x_train"], data["y_train"], epochs=spec["epochs"],
                                   batch_size=TRAIN["batch_size"], lr=TRAIN["lr"], seed=TRAIN["seed"],
                                   progress=False, device="cpu", checkpoint_path=path.with_suffix(".ckpt"))
        save_model(net, path, meta={"epochs": spec["epochs"], "train_seconds": float(sum(history["seconds"])),
                                    "load_before": load, "load_after": _load(),
                                    "torch_threads": torch.get_num_threads(), "loss": history["loss"],
                                    "accuracy": history["accuracy"]})
    return load_model(path, return_meta=True)


def _fingerprint(net) -> str:
    """A hash of the weights: the steps of OUT.json are redone when the network they measured changed."""
    digest = hashlib.sha1()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float(sum(int((net(torch.from_numpy(x[i:i + 250])).argmax(1).numpy() == y[i:i + 250]).sum())
                         for i in range(0, len(x), 250)) / len(x))


def _step(results: Dict[str, Any], out: Path, net_name: str, key: str, settings: Dict[str, Any],
          run: Callable[[], Dict[str, Any]]) -> None:
    """Run one timed step unless OUT holds it with the same settings; record load and threads; save."""
    import torch

    rows = results["nets"][net_name]
    if key in rows and rows[key].get("settings") == settings:
        return
    load = _load()
    started = time.perf_counter()
    row = run()
    row.update({"settings": settings, "step_seconds": time.perf_counter() - started, "load_before": load,
                "load_after": _load(), "torch_threads": torch.get_num_threads()})
    rows[key] = row
    print(net_name, key, json.dumps(_brief(row)), flush=True)
    _save(out, results)


def _brief(row: Any) -> Any:
    """The row without its per-image lists and nested runs, for the log."""
    if not isinstance(row, dict):
        return row
    return {k: _brief(v) for k, v in row.items() if k not in ("per_image", "with_exact", "without_exact")}


def _tiers(net, data: Dict[str, Any], n: int) -> Dict[str, Any]:
    """Each tier alone on the root boxes of the first n test images, one image at a time, with a deadline."""
    import torch

    from pixdisc.bounds import Meter, escalate, tunables
    from pixdisc.candidates import box_hull

    lower, upper = box_hull(data["x_test"][:n], data["book"], data["eps"], channel_axis=1)
    lower, upper = torch.from_numpy(lower), torch.from_numpy(upper)
    y = torch.from_numpy(data["y_test"][:n])
    # Untimed: the first autograd and Adam use of the process (about 1 s, whatever the network) on a tiny
    # MLP, and the network's bound graph, traced once per model; no timed tier pays for either.
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    box = torch.linspace(0, 1, 4).reshape(1, 1, 2, 2)
    # The wrong label, so no tier proves it and alpha-CROWN runs its steps.
    escalate(tiny, box * 0, box, 1 - tiny(box).argmax(1), "alpha-crown", first="crown", dtype=torch.float64)
    escalate(net, lower[:1], upper[:1], y[:1], "ibp", first="ibp", dtype=torch.float64)
    tiers: Dict[str, Any] = {}
    ran_out: Optional[str] = None
    for tier in TIERS:
        if ran_out is not None:
            tiers[tier] = {"ran_out": True, "run": False,
                           "note": f"not run: {ran_out} ran out of {DEADLINE:g} s and {tier} computes all it does"}
            continue
        per_image = []
        with PeakMemory() as memory:
            for i in range(n):
                meter = Meter(deadline=time.monotonic() + DEADLINE)
                started = time.perf_counter()
                escalation = escalate(net, lower[i:i + 1], upper[i:i + 1], y[i:i + 1], tier, first=tier,
                                      dtype=torch.float64, meter=meter)
                seconds = time.perf_counter() - started
                worst = float(escalation.worst(y[i:i + 1])[0])
                per_image.append({"seconds": seconds, "work": meter.spent, "worst_margin": worst,
                                  "proven": worst > 1e-4,  # certify's _MARGIN_TOLERANCE
                                  "exhausted": None if escalation.exhausted is None else str(escalation.exhausted)})
                if escalation.exhausted is not None:
                    break
        done = [p for p in per_image if p["exhausted"] is None]
        row: Dict[str, Any] = {"run": True, "images": len(per_image), "ran_out": len(done) < len(per_image),
                               "proven": sum(p["proven"] for p in done), "per_image": per_image, **memory.row()}
        if done:
            row.update({"mean_seconds": float(np.mean([p["seconds"] for p in done])),
                        "max_seconds": float(np.max([p["seconds"] for p in done])),
                        "mean_work": float(np.mean([p["work"] for p in done]))})
        if row["ran_out"]:
            ran_out = tier
            row["stopped_after_seconds"] = per_image[-1]["seconds"]
            row["work_when_stopped"] = per_image[-1]["work"]
            row["where"] = per_image[-1]["exhausted"]
        tiers[tier] = row
    return {"tiers": tiers, "alpha_steps": tunables.ALPHA_STEPS}


def _certify_row(net, data: Dict[str, Any], n: int, budget) -> Dict[str, Any]:
    from pixdisc.certification import certify

    with PeakMemory() as memory:
        result = certify(net, data["book"], data["x_test"][:n], data["y_test"][:n], data["eps"], bound="crown",
                         budget=budget, executor="serial", progress=False)
    s = result.summary()
    seconds = np.asarray(result.seconds, float)
    row = {"n": s["n"], "certified": s["certified"], "failed": s["failed"], "unable": s["unable"],
           "mean_seconds": float(seconds.mean()), "max_seconds": float(seconds.max()),
           "wall_seconds": result.wall_seconds, "decided_by": s.get("decided_by"), "root_tier": s.get("root_tier"),
           "per_image": {"outcome": result.outcome.tolist(), "seconds": seconds.tolist(),
                         "method": [str(m) for m in result.method] if result.method is not None else None,
                         "reason": [str(r) for r in result.reason] if result.reason is not None else None},
           **memory.row()}
    work = getattr(result, "work", None)
    if work is not None:
        row["mean_work"] = float(np.mean(work))
        row["max_work"] = float(np.max(work))
    reasons: Dict[str, int] = {}
    for outcome, reason in zip(result.outcome, result.reason if result.reason is not None else [""] * n):
        if outcome == "unable":
            key = str(reason).split(";")[0]
            reasons[key] = reasons.get(key, 0) + 1
    row["unable_reasons"] = reasons
    return row


def _milp_row(net, data: Dict[str, Any], n: int) -> Dict[str, Any]:
    from pixdisc.certification import Budget

    # No S(x) search: every image the cheap tiers leave open goes to the program, as the docstring says.
    on = _certify_row(net, data, n, Budget(nodes=0, seconds=None, work=MILP_WORK, exact_seconds=EXACT_SECONDS,
                                           search=None))
    off = _certify_row(net, data, n, Budget(nodes=0, seconds=None, work=MILP_WORK, exact_seconds=0, search=None))
    outcome_on, outcome_off = on["per_image"]["outcome"], off["per_image"]["outcome"]
    reached = [i for i, o in enumerate(outcome_off) if o == "unable"]
    extra = [on["per_image"]["seconds"][i] - off["per_image"]["seconds"][i] for i in reached]
    decided = [i for i in reached if outcome_on[i] != "unable"]
    return {"n": n, "reached": len(reached), "decided": len(decided),
            "certified": sum(outcome_on[i] == "certified" for i in decided),
            "failed": sum(outcome_on[i] == "failed" for i in decided),
            "mean_extra_seconds": (on["mean_seconds"] - off["mean_seconds"]),
            "mean_seconds_per_reached": float(np.mean(extra)) if extra else None,
            "max_seconds_per_reached": float(np.max(extra)) if extra else None,
            # What decide_milp needed on the images it decided (its own bounds, LP or branch and bound).
            "milp_methods": sorted({on["per_image"]["method"][i] for i in decided}) if on["per_image"]["method"]
            else None,
            "with_exact": on, "without_exact": off}


def train_all(models: Path, only: Optional[str], threads: Optional[int]) -> None:
    """Train (or resume) every network's cached model and nothing else: run it ahead of the timed steps."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    data = Data()
    for name, spec in NETS.items():
        if not only or name == only:
            torch.manual_seed(0)
            train_or_load(name, spec, models, data(spec["data"]))


def run(models: Path, out: Path, only: Optional[str], quick: bool, threads: Optional[int]) -> Dict[str, Any]:
    # Imported here so that rendering (benchmarks/readme_tables.py) needs the JSON only.
    import torch

    from pixdisc.certification import Budget

    if threads:
        torch.set_num_threads(threads)
    path = out.with_suffix(".json")
    results = json.loads(path.read_text()) if path.exists() else {}
    command = "python benchmarks/certify_scale.py"
    if models != Path("fashion-mnist-runs/certify-scale"):
        command += f" --models {models}"
    if out != Path("benchmarks/certify_scale"):
        command += f" --out {out}"
    results["command"] = command + (" --quick" if quick else "") + (f" --threads {threads}" if threads else "")
    results["settings"] = {"work": WORK, "nodes": NODES, "deadline": DEADLINE, "exact_seconds": EXACT_SECONDS,
                           "wall_seconds": WALL_SECONDS,
                           "milp_work": MILP_WORK, "mnist_eps": MNIST_EPS, "rgb_eps": RGB_EPS,
                           "rgb_channels": [list(c) for c in RGB_CHANNELS], "train": TRAIN, "quick": quick}
    results["run"] = {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    results.setdefault("nets", {})
    results.setdefault("data", {})
    data = Data()
    for name, spec in NETS.items():
        if only and name != only:
            continue
        d = data(spec["data"])
        results["data"][spec["data"]] = {"codebook": d["codebook"], "codes_255": d["codes_255"], "eps": d["eps"],
                                         "image_shape": list(d["x_test"].shape[1:])}
        counts = spec["quick" if quick else "images"]
        rows = results["nets"].setdefault(name, {})
        torch.manual_seed(0)
        net, meta = train_or_load(name, spec, models, d)
        fingerprint = _fingerprint(net)
        model_row = {"label": spec["label"], "arch": spec["arch"], "kwargs": spec["kwargs"], "data": spec["data"],
                     "parameters": sum(p.numel() for p in net.parameters()), "epochs": meta.get("epochs"),
                     "weights_sha1": fingerprint,
                     "train_seconds": meta.get("train_seconds"), "train_load_before": meta.get("load_before"),
                     "train_torch_threads": meta.get("torch_threads")}
        if rows.get("model", {}).get("weights_sha1") != fingerprint:
            model_row["clean_accuracy"] = _accuracy(net, d["book"].transform(d["x_test"], channel_axis=1),
                                                    d["y_test"])
            rows["model"] = model_row
            print(name, "model", json.dumps(model_row), flush=True)
            _save(path, results)
        eps = d["eps"]
        _step(results, path, name, "tiers", {"images": counts["tiers"], "deadline": DEADLINE, "eps": eps,
                                             "weights_sha1": fingerprint},
              lambda: _tiers(net, d, counts["tiers"]))
        budget = Budget(nodes=NODES, seconds=None, work=WORK)
        _step(results, path, name, "certify", {"images": counts["certify"], "eps": eps, "bound": "crown",
                                               "nodes": NODES, "work": WORK, "weights_sha1": fingerprint},
              lambda: _certify_row(net, d, counts["certify"], budget))
        wall = Budget(nodes=NODES, seconds=WALL_SECONDS)
        _step(results, path, name, "wall", {"images": counts["certify"], "eps": eps, "bound": "crown",
                                            "nodes": NODES, "seconds": WALL_SECONDS, "weights_sha1": fingerprint},
              lambda: _certify_row(net, d, counts["certify"], wall))
        if "milp" in counts:
            _step(results, path, name, "milp", {"images": counts["milp"], "eps": eps, "work": MILP_WORK,
                                                "exact_seconds": EXACT_SECONDS, "weights_sha1": fingerprint},
                  lambda: _milp_row(net, d, counts["milp"]))
    return results


# ------------------------------------------------------------------------------------------------ rendering


def _secs(value: float) -> str:
    if value >= 10:
        return f"{value:.0f} s"
    if value >= 0.1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _tier_cell(row: Optional[Dict[str, Any]], deadline: float) -> str:
    if not row:
        return ""
    if row.get("ran_out"):
        if not row.get("run", True):
            return f"> {deadline:g} s (not run)"
        return f"> {deadline:g} s ({_count(row['work_when_stopped'])} fp by then)"
    return f"{_secs(row['mean_seconds'])}, {_count(row['mean_work'])} fp ({row['proven']}/{row['images']})"


# ExactOutcome.method of pixdisc.certification.exact.decide_milp: the strongest stage an image needed.
MILP_METHODS = {"bounds": "its own CROWN bounds", "lp-highs": "LP", "milp-highs": "MILP",
                "evaluation": "evaluation", "counterexample": "a counterexample"}


def render(data: Dict[str, Any]) -> str:
    settings, run_info = data["settings"], data["run"]
    deadline = settings["deadline"]
    nets = [(name, rows) for name, rows in data["nets"].items() if "model" in rows]
    header = ("| network | parameters | clean acc. | " + " | ".join(TIER_NAMES[t] for t in TIERS)
              + " | certify: certified / failed / unable | s/image mean (max) | peak RSS "
              + f"| `seconds={settings.get('wall_seconds', WALL_SECONDS):g}`: slowest image | MILP stage |")
    lines = ["# Certification cost against network size", "", header,
             "|:--|--:|--:|" + "--:|" * len(TIERS) + ":--|--:|--:|--:|:--|"]
    loads, threads = [], set()
    for name, rows in nets:
        model = rows["model"]
        tiers = rows.get("tiers", {})
        cells = [model["label"], f"{model['parameters']:,}", f"{100 * model['clean_accuracy']:.1f}%"]
        cells += [_tier_cell(tiers.get("tiers", {}).get(t), deadline) for t in TIERS]
        c = rows.get("certify")
        if c:
            cells += [f"{c['certified']} / {c['failed']} / {c['unable']} of {c['n']}",
                      f"{_secs(c['mean_seconds'])} ({_secs(c['max_seconds'])})", f"{c['peak_rss_mb']:.0f} MB"]
        else:
            cells += ["", "", ""]
        w = rows.get("wall")
        cells.append(f"{w['max_seconds']:.2f} s ({w['certified']} / {w['failed']} / {w['unable']})" if w else "")
        m = rows.get("milp")
        if m:
            per = (f"; {_secs(m['mean_seconds_per_reached'])} each (max {_secs(m['max_seconds_per_reached'])})"
                   if m["reached"] else "")
            how = (" by " + ", ".join(MILP_METHODS.get(k, k) for k in m["milp_methods"])
                   if m.get("milp_methods") else "")
            decided = (f"{m['decided']} decided{how} ({m['certified']} certified, {m['failed']} failed)"
                       if m["decided"] else f"none decided in {settings['exact_seconds']:g} s")
            cells.append(f"{m['reached']} of {m['n']} reach it, {decided}{per}; "
                         f"peak {m['with_exact']['peak_rss_mb']:.0f} MB")
        else:
            cells.append("n/a (not Sequential)" if model["data"] == "rgb" else "")
        lines.append("| " + " | ".join(cells) + " |")
        for key in ("tiers", "certify", "wall", "milp"):
            if key in rows:
                loads += [rows[key]["load_before"], rows[key]["load_after"]]
                threads.add(rows[key]["torch_threads"])
    mnist, rgb = data["data"].get("mnist"), data["data"].get("rgb")
    tier_images = {rows["tiers"]["settings"]["images"] for _, rows in nets if "tiers" in rows}
    lines += [
        "",
        f"Tier columns: each tier alone (`escalate(first=tier, top=tier)`, float64) on the root box of S(x) "
        f"(`box_hull`), image by image on the first {'/'.join(str(n) for n in sorted(tier_images))} test images: "
        f"mean seconds and work (fp = forward passes of one image) per image, and (proven/images) root boxes "
        f"the tier proves; \"> {deadline:g} s\" ran out of the {deadline:g} s deadline on an image (the tiers "
        "after it then not run). alpha-CROWN alone includes the CROWN intermediate bounds it optimises over "
        f"({data['nets'][nets[0][0]].get('tiers', {}).get('alpha_steps', '?') if nets else '?'} Adam steps, "
        "stopping once proven).",
        "",
        f"certify: `certify(bound=\"crown\", budget=Budget(nodes={settings['nodes']}, seconds=None, "
        f"work={settings['work']:g}), executor=\"serial\")` on the first test images: the same work budget "
        f"(forward passes of one image, per image) for every network, so the outcomes do not depend on the "
        "machine's load; seconds per image as certify records them; peak resident set of the process "
        "(sampled every 0.1 s; includes the model, data and Python). The budget includes certify's S(x) search "
        "(`Budget.search`, on the images the batched tiers leave open).",
        "",
        f"`seconds={settings.get('wall_seconds', WALL_SECONDS):g}`: the same images under "
        f"`Budget(nodes={settings['nodes']}, seconds={settings.get('wall_seconds', WALL_SECONDS):g})` (wall clock, "
        "no work limit): the slowest image's seconds (certified / failed / unable); issue 17 asks for at most "
        f"{settings.get('wall_seconds', WALL_SECONDS) + max(1.0, 0.1 * settings.get('wall_seconds', WALL_SECONDS)):g} s.",
        "",
        f"MILP stage (Sequential networks): `certify(budget=Budget(nodes=0, seconds=None, "
        f"work={settings['milp_work']:g}, exact_seconds={settings['exact_seconds']:g}))` against the same with "
        "`exact_seconds=0`: the work pays for IBP and CROWN-IBP only, so every image they leave open reaches "
        "the mixed-integer program (HiGHS, at most "
        f"{settings['exact_seconds']:g} s each; no S(x) search); the difference of the two runs is its time.",
        "",
    ]
    data_lines = []
    if mnist:
        data_lines.append(f"MNIST-5k (1x28x28) behind {mnist['codebook']}, codes {mnist['codes_255']}/255, "
                          f"eps {mnist['eps']:g}")
    if rgb:
        channels = ", ".join(f"shift {s} px scale {k:g}" for s, k in settings["rgb_channels"])
        data_lines.append(f"the ResNets on an RGB 32x32 stand-in made from the same digits (padded 28 -> 32, "
                          f"channel c the digit shifted down-right and scaled: {channels}) behind {rgb['codebook']}, "
                          f"codes {rgb['codes_255']}/255, eps {rgb['eps'] * 255:g}/255")
    epochs = ", ".join(f"{rows['model']['label']} {rows['model']['epochs']}" for _, rows in nets)
    lines.append("Data: " + "; ".join(data_lines) + ". Networks trained naturally on the discretized training "
                 f"images (4,000; Adam 1e-3, batch 128; epochs: {epochs}); clean accuracy behind the codes on "
                 "the 1,000 test images.")
    lines += ["", f"{run_info['cores']} cores, torch {run_info.get('torch', '')}, torch threads "
              f"{', '.join(str(t) for t in sorted(threads)) or run_info['torch_threads']}; load average "
              + (f"{min(loads):.1f} to {max(loads):.1f} around the steps (per step in the JSON)." if loads else "?.")]
    if settings.get("quick"):
        lines += ["", "**Quick run (`--quick`): few images, a smoke test; not for publishing.**"]
    lines += ["", f"Reproduce: `{data['command']}` (`--only NAME` runs one network; a rerun skips finished steps)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("fashion-mnist-runs/certify-scale"),
                        help="where trained networks are cached")
    parser.add_argument("--out", type=Path, default=None,
                        help="OUT.json and OUT.md (default benchmarks/certify_scale; with --quick MODELS/quick)")
    parser.add_argument("--only", choices=tuple(NETS), default=None, help="run one network")
    parser.add_argument("--quick", action="store_true", help="few images per step (a smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--train-only", action="store_true",
                        help="train the cached models and stop (untimed; run it ahead of the benchmark)")
    args = parser.parse_args()
    if args.train_only:
        train_all(args.models, args.only, args.threads)
        return
    out = args.out or (args.models / "quick" if args.quick else Path("benchmarks/certify_scale"))
    data = (json.loads(out.with_suffix(".json").read_text()) if args.render_only
            else run(args.models, out, args.only, args.quick, args.threads))
    text = render(data)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
