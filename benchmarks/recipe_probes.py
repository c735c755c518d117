"""Issue 18's recipe probes: short certified-training runs that chose the recipes in pixdisc.recipes.

    python benchmarks/recipe_probes.py NAME key=value ...      # one probe; appends a row to results.jsonl
    python benchmarks/recipe_probes.py --render                # results.md from results.jsonl

A probe trains a CertCNN variant (`train_certified`, seed 0, one torch thread) on the first N training
images of Fashion-MNIST (data=fm, its certified codes) or MNIST-5k (data=mnist, k=2 density codes r=0.6)
and reports, on the first 1,000 test images at eps ceps: clean accuracy behind the codes, the share
CROWN (and IBP) bounds over the hull of S(x) prove (no branching: a lower floor than certify's), and
accuracy under the training's own attack member with 5 steps (a weak ceiling). The keys and defaults are
in `cfg` below; the commands of the committed rows are in results.md.
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from pixdisc.datasets import as_float_nchw, load_fashion_mnist
from pixdisc.codebook import certified_codebook
from pixdisc.models import build_model, ibp_initialise
from pixdisc.train import train_certified, attack_member
from pixdisc.candidates import box_hull
from pixdisc.bounds import certified_by_bounds

HERE = Path(__file__).resolve().parent / "recipe_probes"
if sys.argv[1:] == ["--render"]:
    rows = [json.loads(line) for line in (HERE / "results.jsonl").read_text().splitlines()]
    lines = ["| probe | command (key=value) | clean | CROWN-verified | IBP-verified | attack member (5 steps) | "
             "train s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | `{' '.join(r.get('argv', []))}` | {100 * r['clean']:.1f}% | "
                     f"{100 * r['crown']:.1f}% | {100 * r['ibp']:.1f}% | {100 * r['vertex5']:.1f}% | {r['train_s']:.0f} |")
    lines += ["", "First 1,000 test images; seed 0; 1 torch thread beside other runs (training seconds depend on load, "
                  "accuracies do not). Command: `python benchmarks/recipe_probes.py NAME key=value ...`."]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    sys.exit(0)
name = sys.argv[1]
cfg = dict(data="fm", ceps=0.1, n=10000, epochs=6, width=16, hidden=256, bn=0, init="default", eps_train=0.15, warmup=1, ramp=2,
           kappa_end=0.7, member_weight=0.0, member_steps=1, bound="ibp", lr=1e-3, batch=128, threads=1)
for kv in sys.argv[2:]:
    k, v = kv.split("=")
    cfg[k] = type(cfg[k])(v) if not isinstance(cfg[k], str) else v
torch.set_num_threads(cfg["threads"])
if cfg["data"] == "fm":
    data = load_fashion_mnist()
    book = certified_codebook("fashion_mnist", data.x_train)
else:
    import pixdisc
    from pixdisc.datasets import load_mnist5k
    data = load_mnist5k()
    book = pixdisc.DensityCodebook(k=2, r=0.6).fit(data.x_train)
xtr, xte = as_float_nchw(data.x_train)[:cfg["n"]], as_float_nchw(data.x_test)[:1000]
ytr, yte = data.y_train[:cfg["n"]], data.y_test[:1000]
torch.manual_seed(0)
net = build_model("cert_cnn", width=cfg["width"], hidden=cfg["hidden"], batch_norm=bool(cfg["bn"]), input_size=[28, 28])
if cfg["init"] == "ibp":
    ibp_initialise(net)
e = cfg["epochs"]
t0 = time.perf_counter()
net, hist = train_certified(net, xtr, ytr, book, eps=cfg["eps_train"], epochs=e, warmup_epochs=cfg["warmup"],
                            ramp_epochs=cfg["ramp"], kappa_end=cfg["kappa_end"], member_weight=cfg["member_weight"],
                            member_steps=cfg["member_steps"], bound=cfg["bound"], batch_size=cfg["batch"], lr=cfg["lr"],
                            lr_milestones=(int(e * .7), int(e * .85)), progress=False)
train_s = time.perf_counter() - t0
net.eval()
lo, up = box_hull(xte, book, cfg["ceps"], channel_axis=1)
lo, up = torch.from_numpy(lo), torch.from_numpy(up)
disc = torch.from_numpy(np.asarray(book.transform(xte, channel_axis=1)))
y = torch.from_numpy(yte).long()
with torch.no_grad():
    clean = float((net(disc).argmax(1) == y).float().mean())
cert = float(certified_by_bounds(net, lo, up, y, "crown").float().mean())
ibp = float(certified_by_bounds(net, lo, up, y, "ibp").float().mean())
member, _ = attack_member(net, disc, lo, up, y, 5, None)
with torch.no_grad():
    attacked = float((net(member).argmax(1) == y).float().mean())
row = dict(name=name, argv=sys.argv[2:], cfg=cfg, train_s=round(train_s, 1), epoch_s=[round(s, 1) for s in hist["seconds"]],
           clean=clean, crown=cert, ibp=ibp, vertex5=attacked, train_verified=hist["verified"][-1])
print(json.dumps(row))
with open(HERE / "results.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
