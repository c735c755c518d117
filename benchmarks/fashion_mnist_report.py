"""Write benchmarks/fashion_mnist.md (and the sweep figure) from the Fashion-MNIST result JSONs; nothing is typed.

    python benchmarks/fashion_mnist_report.py

Reads, each written by its own run (the commands are in the report):

- `benchmarks/fashion_mnist/reproduce.json`: `pixdisc reproduce fashion_mnist -o fashion-mnist-runs/reproduce`
  (its `fashion_mnist.json`, copied here);
- `benchmarks/fashion_mnist/sweep.json`: benchmarks/fashion_mnist_sweep.py;
- `benchmarks/fashion_mnist/certified.json`: benchmarks/fashion_mnist_certified.py;
- `benchmarks/fashion_mnist/recipe.json`: benchmarks/fashion_mnist_recipe.py (issue 18: a recipe over seeds).

`headline()` is the README's quote (benchmarks/readme_tables.py puts it there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "fashion_mnist"
# The targets (moonshots) and the best published bound-trained number (Wong & Kolter 2018).
TARGETS = {"certified": 0.80, "clean": 0.85, "unable": 0.01, "gap_points": 8.0, "seconds": 600.0}
WONG_KOLTER = 0.655
# Issue 18's targets for the recipe (mean of 3 seeds) and the best published certified number at eps 0.1:
# provably robust boosted trees (Andriushchenko & Hein 2019, robust test error 23.2%).
RECIPE_TARGETS = {"certified": 0.80, "clean": 0.86, "unable": 0.005, "gap_points": 5.0, "seeds": 3}
BOOSTED_TREES = 0.768


def _load(name: str) -> dict[str, Any] | None:
    path = FOLDER / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _ci(rate: float, n: int) -> str:
    from pixdisc.statistics import clopper_pearson_interval

    low, high = clopper_pearson_interval(round(rate * n), n)
    return f"{100 * low:.1f}-{100 * high:.1f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def reproduce_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 3. The paper's Fashion-MNIST rows (Tables I-III)", ""]
    if data is None:
        return lines + ["Not run yet: `pixdisc reproduce fashion_mnist -o fashion-mnist-runs/reproduce`.", ""]
    config = data["config"]
    minutes = data["seconds"] / 60
    certified = _load("certified") or {}
    # The timed certifications stopped this run (SIGSTOP): its wall time includes those minutes.
    paused = sum(step.get("paused_others_seconds", 0) for step in certified.get("steps", {}).values()) / 60
    lines += [f"Command: `pixdisc reproduce fashion_mnist -o fashion-mnist-runs/reproduce` (one process, "
              f"OMP_NUM_THREADS=1, beside the other Fashion-MNIST runs on the 2 cores): **{minutes:.0f} min** for "
              f"all three tables (`{data['seconds']:.0f} s`, of which about {paused:.0f} min stopped while the timed "
              f"certifications of section 1 ran; networks shared where the codes coincide).", "",
              f"Recipe ({'quick' if data['quick'] else 'full scale'}): SmallCNN trained on all "
              f"{config['n_train'] or 60000:,} training images; natural {config['natural_epochs']} epochs (Adam "
              f"{config['lr']:g}); adversarial {config['adversarial_epochs']} epochs of {config['train_steps']}-step "
              f"PGD with step {config['train_step_size']:g} at eps {config['train_eps']:g} (the paper: 20 steps of "
              f"0.01, the same total travel 0.2), lr {config['adversarial_lr']:g} divided by 10 from epoch "
              f"{(config['adversarial_lr_milestones'] or ['–'])[0]}; re-training (disc_*_re) "
              f"{config['retrain_epochs']} epoch from the pre-trained network at half the lr on discretized "
              f"images, adversarially through the BPDA gradient (alpha {config['alpha']:g}) for adv_re. "
              f"Evaluation at eps {config['eps']:g}: clean accuracy on all 10,000 test images; the attack "
              f"ceiling ('rob': per-image worst case of S(x) search, PGD-CE/CW and Adam-sign with "
              f"{config['steps']} steps of {config['step_size']:g}, APGD-CE/DLR, Square with "
              f"{config['square_queries']} queries) and the certified floor (IBP, 1 node per image) on the first "
              f"{config['n_test']:,}, with the 95% Clopper-Pearson interval of 'rob'.", "",
              "| table | base | codebook | codes | pre acc | pre rob (95% CI) | pre floor | re acc | re rob (95% CI) "
              "| re floor | paper pre acc / rob | paper re acc / rob |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    titles = {"table1": "I (uniform)", "table2": "II (density)", "table3": "III (k-medoids)"}
    gaps = []
    for table, rows in data["tables"].items():
        for row in rows:
            if row.get("status") != "ok":
                lines.append(f"| {titles[table]} | – | – | – | {row.get('status')}: {row.get('message', '')} |")
                continue
            ours, floors, ci = row["ours"], row["ours_floor"], row.get("ours_ci95") or [None, None]
            paper = row["paper"] or [None] * 4
            codes = "–" if row["codes_255"] is None else "{" + ", ".join(str(c[0]) for c in row["codes_255"]) + "}"

            def rob(value: float | None, interval: list[float] | None) -> str:
                if value is None:
                    return "–"
                return f"{value:.1f}" + (f" ({interval[0]:.1f}-{interval[1]:.1f})" if interval else "")

            lines.append(f"| {titles[table]} | {row['base']} | {row['codebook']} | {codes} | {_num(ours[0])} | "
                         f"{rob(ours[1], ci[0])} | {_num(floors[0])} | {_num(ours[2])} | {rob(ours[3], ci[1])} | "
                         f"{_num(floors[1])} | {_num(paper[0])} / {_num(paper[1])} | "
                         f"{_num(paper[2])} / {_num(paper[3])} |")
            for i, name in enumerate(("pre acc", "pre rob", "re acc", "re rob")):
                if ours[i] is not None and paper[i] is not None and abs(ours[i] - paper[i]) > 3:
                    gaps.append((table, row["base"], row["codebook"], name, ours[i], paper[i]))
    lines += ["", f"{len(gaps)} of the paper's cells differ from ours by more than 3 points:" if gaps else
              "Every cell is within 3 points of the paper's.", ""]
    lines += [f"- {titles[t]}, {base}, {book}, {name}: ours {o:.1f}, paper {p:.1f} ({o - p:+.1f})"
              for t, base, book, name, o, p in gaps]
    if gaps:
        lines += ["", "Why they differ:"] + [f"- {text}" for text in _why(gaps, config)]
    return lines + [""]


def _why(gaps: list[tuple[Any, ...]], config: dict[str, Any]) -> list[str]:
    """The reasons that apply to the gaps found (each names its direction), from the recipes' differences."""
    reasons = []
    robust_lower = [g for g in gaps if g[3].endswith("rob") and g[4] < g[5]]
    robust_higher = [g for g in gaps if g[3].endswith("rob") and g[4] > g[5]]
    clean = [g for g in gaps if g[3].endswith("acc")]
    if robust_lower:
        reasons.append(f"{len(robust_lower)} robust cell(s) lower than the paper's: our 'rob' is the per-image worst "
                       "case of seven attacks, among them the S(x) search that enumerates and searches the discretized "
                       "set directly and the gradient-free Square attack, where the paper reports its BPDA PGD attack "
                       "alone; a discretized model's gradient attacks overstate its robustness (issue 9 measured 3-5 "
                       "points on MNIST-5k), which the 'floor' column bounds from below. All of them are adversarially "
                       "trained rows, whose clean accuracy is also lower (next point): most of the gap is the "
                       "shorter adversarial training.")
    if robust_higher:
        reasons.append(f"{len(robust_higher)} robust cell(s) higher than the paper's: the paper's numbers are on its "
                       "own models and codes; ours are measured on the first "
                       f"{config['n_test']:,} test images (see the 95% interval beside each).")
    if clean:
        reasons.append(f"{len(clean)} clean-accuracy cell(s): a different network and budget. Ours is pixdisc's "
                       f"SmallCNN trained for {config['natural_epochs']} natural / {config['adversarial_epochs']} "
                       f"adversarial epochs ({config['train_steps']}-step PGD) and re-trained for "
                       f"{config['retrain_epochs']} epoch; the paper uses Madry et al.'s MNIST hyper-parameters "
                       "(100,000 batches of 50, 83 epochs; 20-step PGD for Fashion-MNIST) and re-trains for 10,000 "
                       "more steps (Section II-F). Fewer adversarial epochs cost most in the adversarially trained "
                       "rows.")
    return reasons


def sweep_section(data: dict[str, Any] | None, figure: Path | None) -> list[str]:
    lines = ["## 2. Which codes certify: k x codebook method", ""]
    if data is None:
        return lines + ["Not run yet: `python benchmarks/fashion_mnist_sweep.py`.", ""]
    budget = data["budget"]
    lines += [f"Command: `{data['command']}` ({data['torch_threads']} torch thread, beside the other runs).", "",
              f"Codes fitted on the 60,000 training images (density: Algorithm 1 with the largest r in "
              f"[{data['r_grid'][0]:g}, {data['r_grid'][1]:g}] (step 0.02) that still yields k codes; k-medoids: "
              f"Algorithm 2, l1; uniform: k levels). 'ambiguous' is the share of all 10,000 test images' pixels "
              f"with more than one reachable code at eps {data['eps']:g}. Per cell two CertCNNs on the first "
              f"{budget['n_train']:,} training images: natural training on the discretized images "
              f"({budget['natural_epochs']} epochs: the accuracy the codes leave), and `train_certified` "
              f"({budget['epochs']} epochs, eps_train {budget['eps_train']:g}), certified with `certify` "
              f"(branch and bound, CROWN, {budget['nodes']} nodes / {budget['seconds']:g} s per image) on the first "
              f"{budget['n_certify']} test images. A sweep's budget: the headline model (section 1) trains longer on "
              "all the data.", "",
              "| method | k | codes (/255) | ambiguous pixels | median ambiguous per image | natural clean | "
              "certified-trained clean | certified (95% CI) | failed | unable | seconds |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cells = sorted(data["cells"].values(), key=lambda c: (c["method"], c["k"]))
    for c in cells:
        method = c["method"] + (f" (r={c['r']:g})" if "r" in c else "")
        lines.append(f"| {method} | {c['k']} | {{{', '.join(str(v) for v in sorted(c['codes_255']))}}} | "
                     f"{_pct(c['ambiguous'])} | {c['median_ambiguous_pixels']:.0f} | {_pct(c['natural_clean'])} | "
                     f"{_pct(c['certified_clean'])} | {_pct(c['certified'])} ({_ci(c['certified'], c['n_certify'])}) | "
                     f"{_pct(c['failed'])} | "
                     f"{_pct(c['unable'])} | {c['seconds']:.0f} |")
    best = best_cell(data)
    lines += ["", f"Most certified: {best['method']} k={best['k']} ({_pct(best['certified'])} certified, "
                  f"{_pct(best['certified_clean'])} clean on the sweep's budget): the default Fashion-MNIST codes "
                  "for certification (`pixdisc.codebook.CERTIFIED_CODEBOOKS`, `pixdisc codes --certified`; "
                  "tests/test_codebooks.py checks the two agree)."]
    if figure is not None:
        lines += ["", f"![sweep](fashion_mnist/{figure.name})"]
    return lines + [""]


def best_cell(data: dict[str, Any]) -> dict[str, Any]:
    """The sweep's choice: most certified; then higher clean accuracy of the certified model; then fewer codes."""
    return max(data["cells"].values(), key=lambda c: (c["certified"], c["certified_clean"], -c["k"]))


def plot_sweep(data: dict[str, Any], path: Path) -> Path:
    from pixdisc.report import png_figure

    cells = list(data["cells"].values())
    with png_figure(path, (10, 3.6)) as (fig, axes):
        fig.clear()  # three panels instead of the one axes png_figure makes
        fig.suptitle("Fashion-MNIST codes: ambiguity, accuracy and certified accuracy at eps 0.1 (sweep budget)")
        panels = fig.subplots(1, 3)
        for method, marker in (("density", "o"), ("kmedoids", "s"), ("uniform", "^")):
            row = sorted((c for c in cells if c["method"] == method), key=lambda c: c["k"])
            ks = [c["k"] for c in row]
            panels[0].plot(ks, [100 * c["ambiguous"] for c in row], marker=marker, label=method)
            panels[1].plot(ks, [100 * c["natural_clean"] for c in row], marker=marker, label=method)
            panels[2].plot(ks, [100 * c["certified"] for c in row], marker=marker, label=method)
        for panel, label in zip(panels, ("ambiguous pixels at eps 0.1 (%)", "clean accuracy, natural (%)",
                                         "certified at eps 0.1 (%)")):
            panel.set_xlabel("k (codes)")
            panel.set_ylabel(label)
            panel.grid(alpha=0.3)
        panels[2].legend()
        fig.tight_layout()
    return path


def _rerun_difference(steps: dict[str, Any]) -> str:
    old, new = steps.get("disc/default-crown-everywhere/0.1"), steps.get("disc/default/0.1")
    if not (old and new):
        return ""
    counts = {name: (round(old[name] * old["n"]), round(new[name] * new["n"])) for name in ("certified", "failed",
                                                                                          "unable")}
    changed = {name: pair for name, pair in counts.items() if pair[0] != pair[1]}
    if not changed:
        return " Both runs decided every image the same way."
    return (" The two eps-0.1 runs differ in " + ", ".join(f"{name} {a:,} -> {b:,}" for name, (a, b) in
                                                           changed.items())
            + ": images whose branch and bound ends near its 5-second budget are decided by how fast the "
              "machine ran them.")


def _others(step: dict[str, Any]) -> str:
    # A load average well above certify's own two workers means another process shared the machine.
    if "paused_others_seconds" not in step:
        return ""
    return "paused; " if max(step["load_before"], step["load_after"]) < 2.5 else "paused, but shared with another job; "


def _seconds(step: dict[str, Any] | None) -> str:
    return "" if step is None else f"{step['seconds']:.0f} s"


def certified_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 1. Certified training on 60,000 images, certification of all 10,000", ""]
    if data is None or "models" not in data:
        return lines + ["Not run yet: `python benchmarks/fashion_mnist_certified.py train` then `... certify`.", ""]
    recipe, models, steps = data["recipe"], data["models"], data.get("steps", {})
    disc, plain = models.get("disc"), models.get("plain")
    lines += ["Commands: `python benchmarks/fashion_mnist_certified.py train --only disc` and `... train --only "
              "plain` (1 torch thread each, beside the other Fashion-MNIST runs), then `python "
              "benchmarks/fashion_mnist_certified.py certify --pause PID` (PID: the `pixdisc reproduce` run, "
              "stopped during every timed certification so that it runs on an idle machine; the plain model's "
              "verification and the attack suite ran beside it); after the root-bound change below, `... certify "
              "--eps 0.1 --pause PID` again.", "",
              f"Both models: `{recipe['arch']}` (conv16 4x4/2, conv32 4x4, fc256), {recipe['epochs']} epochs of "
              f"batch {recipe['batch_size']} on all 60,000 training images, Adam {recipe['lr']:g} divided by 10 at "
              f"epochs {', '.join(str(m) for m in recipe['lr_milestones'])}, {recipe['warmup_epochs']} natural "
              f"epoch, eps ramped to eps_train = {recipe['eps_train']:g} over {recipe['ramp_epochs']} epochs, "
              f"kappa 1 -> {recipe['kappa_end']:g}. **discretized**: `train_certified` behind the default "
              f"Fashion-MNIST codes {{{', '.join(str(c) for c in data['codes_255'])}}}/255 "
              "(`pixdisc.codebook.certified_codebook('fashion_mnist', x_train)`, from the sweep); **plain IBP**: the "
              "same call with `codebook=None` (interval-bound training on the eps-box, no discretization)."]
    if disc and plain:
        lines += ["", f"Training time: discretized {disc['train_seconds'] / 60:.1f} min, plain "
                      f"{plain['train_seconds'] / 60:.1f} min ({disc['torch_threads']} torch thread; load average "
                      f"{disc['load_before']:.1f} / {plain['load_before']:.1f} at the start). Clean accuracy on the "
                      f"10,000 test images: discretized **{_pct(disc['clean_accuracy'])}**, plain "
                      f"{_pct(plain['clean_accuracy'])}."]
    if steps:
        budget = data["budget"]
        lines += ["", f"Certification: `pixdisc.certify(model, codes, x_test, y_test, eps, mode=\"bab\", "
                      f"bound=\"crown\", budget=Budget(nodes={budget['nodes']}, seconds={budget['seconds']:g}))` on "
                      "all 10,000 test images with the default executor (one local process per core) and, at eps "
                      "0.1, on a Dask `LocalCluster(n_workers=2, threads_per_worker=1)`. The plain model is "
                      "CROWN-verified on the eps-box (the bound certify's root uses). Peak memory: resident set of "
                      "the process and its workers, sampled every 0.2 s. 'paused': the other long runs were stopped "
                      "for the timed run; a load average of about 2 is then certify's own two workers.", "",
                      "| eps | executor | root bounds | certified (Clopper-Pearson lower bound, "
                      f"{1 - next(iter(steps.values())).get('delta', 0.01):.0%}) | failed | unable | wall time | "
                      "images/s | peak memory | other runs (load average before -> after) | plain IBP, verified | "
                      "plain wall time |",
                      "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = sorted(((key, s) for key, s in steps.items() if key.split("/")[0] == "disc" and "certified" in s),
                      key=lambda item: (item[1]["eps"], item[0].split("/")[1] != "default-crown-everywhere"))
        for key, s in rows:
            executor = key.split("/")[1]
            p = steps.get(f"plain/crown/{s['eps']:g}") if executor != "dask" else None
            executor = "default" if executor.startswith("default") else executor
            memory = s["peak_rss_mb"]  # the client process and every process below it (local workers, Dask's)
            lines.append(f"| {s['eps']:g} | {executor} | {s.get('root_bounds', 'CROWN on every box')} | "
                         f"{_pct(s['certified'])} ({_pct(s['lower_clopper_pearson'])}) "
                         f"| {_pct(s['failed'])} | {_pct(s['unable'], 2)} | {s['seconds']:.0f} s | "
                         f"{s['images_per_second']:.0f} | {memory:.0f} MB | "
                         f"{_others(s)}load {s['load_before']:.1f} -> {s['load_after']:.1f} | "
                         f"{_pct(p['verified']) if p else ''} | {_seconds(p)} |")
        if any(key.startswith("disc/default-crown-everywhere/") for key in steps):
            lines += ["", "Rows with root bounds 'CROWN on every box' come from the first run of this benchmark; "
                          "certify now computes interval bounds first and CROWN only on the boxes they leave open "
                          "(the same decisions: CROWN is intersected with IBP, so it proves whatever IBP proves; "
                          "tests/test_certify.py checks it box by box)." + _rerun_difference(steps)]
        suite_disc, suite_plain = steps.get("disc/suite/0.1"), steps.get("plain/suite/0.1")
        if suite_disc:
            lines += ["", f"Attack ceiling beside the floor (first {suite_disc['n']:,} test images, eps 0.1, "
                          f"`pixdisc.evaluation.robustness_interval`: the default suite "
                          f"{', '.join(suite_disc['attacks'][:-1])} with 100 steps of 0.01, per-image worst case, "
                          f"then certify on every image): discretized model floor {_pct(suite_disc['floor'])}, "
                          f"ceiling {_pct(suite_disc['ceiling'])}, {suite_disc['undecided']} undecided"
                          + (f"; plain model, attacked by "
                             f"{', '.join(suite_plain['attacks'])}: ceiling {_pct(suite_plain['ceiling'])}"
                             if suite_plain else "") + "."]
        lines += ["", "Every 'failed' comes with a counterexample x' within eps that the whole defended model "
                      "misclassifies (one-channel candidate sets are exact)."]
    return lines + [""]


def targets_section(certified: dict[str, Any] | None) -> list[str]:
    lines = ["## Targets of the first certified model (issue 10)", ""]
    steps = (certified or {}).get("steps", {})
    s, p = steps.get("disc/default/0.1"), steps.get("plain/crown/0.1")
    disc = (certified or {}).get("models", {}).get("disc")
    if not (s and p and disc):
        return lines + ["Not measured yet.", ""]
    gap = 100 * (s["certified"] - p["verified"])
    checks = [(f"certified >= {TARGETS['certified']:.0%} at eps 0.1 with clean >= {TARGETS['clean']:.0%}: "
               f"{_pct(s['certified'])} with {_pct(disc['clean_accuracy'])} clean",
               s["certified"] >= TARGETS["certified"] and disc["clean_accuracy"] >= TARGETS["clean"]),
              (f"unable <= {TARGETS['unable']:.0%}: {_pct(s['unable'], 2)}", s["unable"] <= TARGETS["unable"]),
              (f"plain IBP at least {TARGETS['gap_points']:g} points below: {_pct(p['verified'])}, "
               f"{gap:+.1f} points", gap >= TARGETS["gap_points"]),
              (f"10,000 images in under {TARGETS['seconds'] / 60:.0f} minutes: {s['seconds'] / 60:.1f} min",
               s["seconds"] < TARGETS["seconds"]),
              (f"above Wong & Kolter's {WONG_KOLTER:.1%} (convex outer bound, 2018)", s["certified"] > WONG_KOLTER)]
    lines += [f"- {'met' if ok else '**not met**'}: {text}" for text, ok in checks] + [""]
    suite = steps.get("disc/suite/0.1")
    if suite and suite.get("floor") is not None:
        lines += [f"Reading: behind the codes, the same network and training budget certify {abs(gap):.1f} points "
                  f"{'more' if gap >= 0 else 'less'} than plain interval-bound training, with {_pct(disc['clean_accuracy'])} clean accuracy against "
                  f"{_pct(certified['models']['plain']['clean_accuracy'])}. The certificate is nearly exact: on the "
                  f"first {suite['n']:,} test images the floor ({_pct(suite['floor'])}) is "
                  f"{100 * (suite['ceiling'] - suite['floor']):.1f} points below the strongest attacks' ceiling "
                  f"({_pct(suite['ceiling'])}), and every 'failed' image has a real counterexample. What keeps the "
                  "number below the moonshot is the model, not the verifier: in the codebook sweep certified "
                  "accuracy stops rising at k=4 (and falls for k=6-8 except with density codes) while the codes' "
                  "own clean accuracy stays near 81% at its budget, so more codes do not help; a larger network and longer training (not affordable on 2 cores here) are "
                  "the next levers.", ""]
    return lines


def _plain_reading(data: dict[str, Any]) -> str:
    """How the plain twin's attack ceiling compares with the discretized model's (first images, seed 0)."""
    ceilings = {model["kind"]: data["steps"].get(f"{name}/ceiling") for name, model in data["models"].items()
                if model["seed"] == 0}
    disc, plain = ceilings.get("disc"), ceilings.get("plain")
    if not (disc and plain):
        return ""
    return (f" Without codes the same recipe's attack ceiling is {_pct(plain['ceiling'])} against "
            f"{_pct(disc['ceiling'])} behind them (same {disc['n']:,} images): with the attack member in the loss "
            "the plain network is as robust, and the discretized model's lead in certified accuracy is what its "
            "verifier can prove (branch and bound over S(x)) that interval and CROWN bounds on the eps-box cannot.")


def recipe_section(data: dict[str, Any] | None) -> list[str]:
    """Issue 18: the recipe's seeds, its plain twin, the targets."""
    import statistics

    import fashion_mnist_recipe

    lines = ["## Recipe over seeds (issue 18)", ""]
    if not data or not data.get("models"):
        return lines + ["Not measured yet.", ""]
    rows: dict[str, list[tuple[float, float, float | None]]] = {}
    for name, model in data["models"].items():
        floor = data["steps"].get(f"{name}/floor")
        if floor:
            rows.setdefault(model["kind"], []).append((model["clean"], floor["certified"], floor.get("unable")))
    recipe = next(iter(data["models"].values()))["recipe"]
    disc, plain = rows.get("disc", []), rows.get("plain", [])
    if disc:
        certified = statistics.mean(r[1] for r in disc)
        clean = statistics.mean(r[0] for r in disc)
        unable = max(r[2] for r in disc)
        seeds = len(disc)
        checks = [(f"certified >= {RECIPE_TARGETS['certified']:.0%} at eps 0.1 with clean >= "
                   f"{RECIPE_TARGETS['clean']:.0%} (mean of {RECIPE_TARGETS['seeds']} seeds): {_pct(certified, 2)} "
                   f"with {_pct(clean, 2)} clean, over {seeds} seed(s); "
                   f"{100 * (certified - RECIPE_TARGETS['certified']):+.1f} points from the target",
                   certified >= RECIPE_TARGETS["certified"] and clean >= RECIPE_TARGETS["clean"]
                   and seeds >= RECIPE_TARGETS["seeds"]),
                  (f"unable <= {RECIPE_TARGETS['unable']:.1%} (every seed): at most {_pct(unable, 2)}",
                   unable <= RECIPE_TARGETS["unable"])]
        if plain:
            gap = 100 * (certified - statistics.mean(r[1] for r in plain))
            checks.append((f"discretized at least {RECIPE_TARGETS['gap_points']:g} points above the same recipe "
                           f"without codes: {gap:+.1f} points", gap >= RECIPE_TARGETS["gap_points"]))
        checks.append((f"above the best published certified accuracy at eps 0.1, provably robust boosted trees "
                       f"{BOOSTED_TREES:.1%} (Andriushchenko & Hein 2019)", certified > BOOSTED_TREES))
        lines += [f"- {'met' if ok else '**not met**'}: {text}" for text, ok in checks] + [""]
    ceiling = next((data["steps"][f"{name}/ceiling"] for name, model in sorted(data["models"].items())
                    if model["kind"] == "disc" and f"{name}/ceiling" in data["steps"]), None)
    first = (_load("certified") or {}).get("steps", {}).get("disc/default/0.1")
    if disc and ceiling and first:
        limit = ("the verifier decides nearly every image, so the model, not the bound, is what is short of the "
                 "target" if ceiling["ceiling"] - ceiling["floor"] < 0.01 else
                 "the gap between floor and ceiling is where a stronger verifier or attack would move the number")
        lines += [f"Reading: the recipe certifies {_pct(certified, 2)} (mean of {len(disc)} seed(s)), "
                  f"{100 * (certified - first['certified']):+.1f} points over the first model below (issue 10, "
                  f"{_pct(first['certified'])}), with {_pct(clean, 1)} clean accuracy. On the first {ceiling['n']:,} "
                  f"test images of seed 0 the floor is {_pct(ceiling['floor'])} and the strongest attacks' ceiling "
                  f"{_pct(ceiling['ceiling'])}: {limit}. What moved it and what did not is measured in "
                  "[recipe_probes/results.md](recipe_probes/results.md) (20,000 images, 10 epochs, CROWN-verified "
                  "share of 1,000 test images): the attack member in the loss, a training eps closer to the "
                  "certified one (0.12 instead of 0.15) and a wider network each added 0.7-1.8 points, BatchNorm "
                  "with IBP initialisation lost 6.6 at this depth, more attack steps and a larger bound weight "
                  "nothing. Training took well under the issue's 2.5 hours per model (table); a wider network or more "
                  "epochs within that budget were not tried."
                  + _plain_reading(data), ""]
    lines += [f"Recipe `{recipe['name']}` (`pixdisc train --recipe {recipe['name']} --show-recipe`): "
              f"{recipe['arch']} ({', '.join(f'{k}={v}' for k, v in recipe['arch_kwargs'].items())}), {recipe['epochs']} epochs of batch {recipe['batch_size']} "
              f"on all 60,000 training images, eps_train {recipe['eps']:g}, attack-member weight "
              f"{recipe['member_weight']:g}, bound {recipe['bound']}, kappa 1 -> {recipe['kappa_end']:g}.", ""]
    lines += fashion_mnist_recipe.render(data).splitlines() + [""]
    return lines


def render() -> str:
    reproduce, sweep, certified = _load("reproduce"), _load("sweep"), _load("certified")
    figure = plot_sweep(sweep, FOLDER / "sweep.png") if sweep and sweep.get("cells") else None
    lines = ["# Fashion-MNIST at full scale", "",
             "Written by `python benchmarks/fashion_mnist_report.py` from the JSONs in `benchmarks/fashion_mnist/`; "
             "every number below comes from a run whose command is given with it. Machine: 2 cores, no GPU.", ""]
    lines += recipe_section(_load("recipe"))
    lines += targets_section(certified) + certified_section(certified) + sweep_section(sweep, figure)
    lines += reproduce_section(reproduce)
    return "\n".join(lines)


def headline() -> str:
    """The README's quote: the certified rows and the targets."""
    text = render()
    start = text.index("## Recipe over seeds")
    end = text.index("## 2.")
    body = text[start:end].replace("## ", "#### ")
    return body + "\nFull report, with the codebook sweep and the paper's rows: [benchmarks/fashion_mnist.md](benchmarks/fashion_mnist.md).\n"


def main() -> None:
    (HERE / "fashion_mnist.md").write_text(render())


if __name__ == "__main__":
    main()
