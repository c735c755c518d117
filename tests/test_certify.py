"""The certificate against brute force: it must never claim more than exhaustive search allows."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixdisc  # noqa: E402
from pixdisc.candidates import candidate_sets  # noqa: E402
from pixdisc.certification import Budget, certify  # noqa: E402
from pixdisc.sx_attack import SearchBudget  # noqa: E402



pytestmark = pytest.mark.usefixtures("single_torch_thread")


def tiny_net(in_features, classes=3, seed=0, hidden=10):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_features, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes)).eval()


def exhaustive_outcome(net, book, image, label, eps):
    """Ground truth over the exact 1-channel reachable sets: every z, one by one."""
    sets = candidate_sets(image[None], book, eps, rule="exact", channel_axis=1)
    choices = [book.codes_[sets.of(p), 0] for p in range(image.size)]
    with torch.no_grad():
        for combo in itertools.product(*choices):
            z = torch.tensor(np.array(combo, np.float32).reshape(1, *image.shape))
            if int(net(z).argmax(1)) != label:
                return "failed"
    return "certified"


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.15, 0.3])
@pytest.mark.parametrize("mode", ["paper", "bab"])
def test_one_channel_outcomes_equal_exhaustive_search(eps, mode):
    rng = np.random.default_rng(int(eps * 100))
    codes = np.array([[0.0], [0.25], [0.5], [0.8], [1.0]], np.float32)
    book = pixdisc.Codebook(codes)
    x = (rng.integers(0, 256, size=(24, 1, 2, 3)) / np.float32(255)).astype(np.float32)  # 8-bit: real ties
    net = tiny_net(6, seed=1)
    with torch.no_grad():
        y = net(torch.from_numpy(book.transform(x, channel_axis=1))).argmax(1).numpy()
    y[::5] = (y[::5] + 1) % 3  # some samples wrong from the start
    result = certify(net, book, x, y, eps, mode=mode, b=64, executor="serial", progress=False,
                     budget=Budget(nodes=10_000, seconds=60, leaf_log2=4))
    assert (result.outcome != "unable").all()
    for i in range(len(x)):
        assert result.outcome[i] == exhaustive_outcome(net, book, x[i], y[i], eps), i


def _three_code_task():
    """30 random 2x2 images behind codes {0, 0.5, 1}, labelled by a tiny two-class net (T(x) right)."""
    rng = np.random.default_rng(5)
    codes = np.array([[0.0], [0.5], [1.0]], np.float32)
    book = pixdisc.Codebook(codes)
    x = rng.random((30, 1, 2, 2)).astype(np.float32)
    net = tiny_net(4, classes=2, seed=3)
    with torch.no_grad():
        y = net(torch.from_numpy(book.transform(x, channel_axis=1))).argmax(1).numpy()
    return net, book, codes, x, y


@pytest.mark.parametrize("mode", ["paper", "bab"])
def test_failures_come_with_checked_counterexamples(mode):
    net, book, codes, x, y = _three_code_task()
    eps = 0.2
    result = certify(net, book, x, y, eps, mode=mode, b=64, executor="serial", progress=False)
    failed = np.flatnonzero(result.outcome == "failed")
    assert len(failed) > 0
    for i in failed:
        z = result.z_codes[i]
        with torch.no_grad():
            assert int(net(torch.from_numpy(codes[z].reshape(1, 1, 2, 2))).argmax(1)) != y[i]
        assert result.verified[i]  # exact sets: the failure is a real attack
        x_adv = result.counterexample[i]
        # Within eps by the distance test of pixdisc itself (no tolerance), and discretized into z.
        assert (np.abs(x_adv.astype(np.float64) - x[i].astype(np.float64)) <= eps).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        np.testing.assert_array_equal(np.asarray(book.assign(x_adv[None], channel_axis=1)).reshape(-1), z)
        with torch.no_grad():
            pred = net(torch.from_numpy(book.transform(x_adv[None], channel_axis=1))).argmax(1)
        assert int(pred) != y[i]


def all_high_net(pixels, high, channels=1):
    """Class 0 exactly when every input value is `high` (inputs are 0 or high): any low pixel flips it."""
    n = channels * pixels
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, 2)).eval()
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0].fill_(1.0 / high)
        net[1].bias.copy_(torch.tensor([-(n - 0.5), 0.0]))
    return net


# 8-bit cases where x -/+ eps meets (up to float rounding) the midpoint of two codes.
_TIE_CASES = [
    ([0, 253], [152], 0.1),  # 0.1 from the midpoint +2.4e-8: the old 1e-6 slack made it ambiguous
    ([0, 253], [203], 0.3),
    ([100, 102], [99, 100, 101, 102, 103], 1 / 255),
    ([102, 100], [99, 100, 101, 102, 103], 1 / 255),
    ([102, 100, 102], [98, 99, 103, 104], 2 / 255),
    ([100, 102, 101], [99, 100, 101, 102, 103], 0.5 / 255),
]


@pytest.mark.parametrize("mode", ["paper", "bab"])
@pytest.mark.parametrize("codes, pixels, eps", _TIE_CASES)
def test_one_channel_8_bit_ties_equal_exhaustive_search(codes, pixels, eps, mode):
    """Exact candidate sets: certify's outcome is the exhaustive one over the exact reachable sets, and no
    longer fails an image that no input can flip; every failure is a checked counterexample."""
    rng = np.random.default_rng(len(pixels) + len(codes))
    book = pixdisc.Codebook(np.array(codes, np.uint8))
    x = (rng.choice(pixels, size=(12, 1, 2, 2)) / np.float32(255)).astype(np.float32)
    x[0] = np.float32(pixels[0]) / np.float32(255)
    nets = [tiny_net(4, classes=2, seed=9)]
    high = float(book.codes_.max())
    if len(codes) == 2 and codes[0] == 0:
        nets.append(all_high_net(4, high))
    for net in nets:
        with torch.no_grad():
            y = net(torch.from_numpy(book.transform(x, channel_axis=1))).argmax(1).numpy()
        result = certify(net, book, x, y, eps, mode=mode, b=64, executor="serial", progress=False,
                         budget=Budget(nodes=10_000, seconds=60, leaf_log2=4))
        for i in range(len(x)):
            assert result.outcome[i] == exhaustive_outcome(net, book, x[i], y[i], eps), (i, x[i].ravel() * 255)
        assert result.verified[result.outcome == "failed"].all()
        assert not result.verified[result.outcome != "failed"].any()
    if len(nets) == 2:
        # Codes {0, 253/255} at pixel 152/255 (eps 0.1) or 203/255 (eps 0.3): every pixel maps to 253/255
        # whatever the perturbation, so the all-high image is certified for the net that any 0 flips.
        assert result.outcome[0] == "certified"


@pytest.mark.parametrize("mode", ["paper", "bab"])
def test_unrealizable_misclassified_member_is_unable_not_failed(mode):
    """RGB uses the sound rule, whose 1e-6 slack admits code 0 at the gray pixel 152/255 (eps 0.1) although
    no input reaches it: the misclassified z it gives is kept for inspection, but the sample is "unable"."""
    codes = np.array([[0, 0, 0], [253, 253, 253]], np.uint8)
    book = pixdisc.Codebook(codes)
    x = np.full((2, 3, 2, 2), np.float32(152) / np.float32(255), np.float32)
    counts = pixdisc.candidates.candidate_counts(x, book, 0.1, channel_axis=1)
    assert (counts == 2).all()  # the sound rule admits the unreachable code
    net = all_high_net(4, float(book.codes_.max()), channels=3)
    result = certify(net, book, x, [0, 0], 0.1, mode=mode, b=64, executor="serial", progress=False)
    assert result.outcome.tolist() == ["unable", "unable"]
    assert not result.verified.any() and result.counterexample == {}
    for i in range(2):
        z = result.z_codes[i]
        with torch.no_grad():  # a misclassified member of S(x) that no input realizes
            assert int(net(torch.from_numpy(book.codes_[z].T.reshape(1, 3, 2, 2).copy())).argmax(1)) != 0
    assert result.summary()["failed"] == 0 and result.summary()["verified_attacks"] == 0


def test_realize_probe_reaches_every_exact_candidate():
    """One channel: the float32 of the ball closest to a candidate code discretizes to that code."""
    from pixdisc.realize import ball_ends as _ball_ends

    # Exact arithmetic: |u - 0.5| <= 0.5 - 2^-40 holds down to 2^-40 exactly (float64 would let 512 more floats in).
    lo, hi = _ball_ends(np.array([0.5, 2.0**-60], np.float32), 0.5 - 2.0**-40)
    assert lo.tolist() == [2.0**-40, 0.0]
    assert hi.tolist() == [1 - 2.0**-24, 0.5 - 2.0**-25]
    rng = np.random.default_rng(21)
    for trial in range(20):
        codes = rng.integers(0, 256, size=int(rng.integers(2, 8))).astype(np.uint8)
        book = pixdisc.Codebook(codes)
        x = np.concatenate([rng.integers(0, 256, size=200) / np.float32(255), rng.random(200), [0.0, 0.5, 1.0]])
        x = x.astype(np.float32)
        # (Not 0.5 - 2^-40: there the rule's float64 test admits floats that exact arithmetic does not.)
        eps = float(rng.choice([0.0, 0.5 / 255, 1 / 255, 0.05, 0.1, 0.3]))
        lo, hi = _ball_ends(x, eps)
        x64 = x.astype(np.float64)
        assert (np.abs(lo - x64) <= eps).all() and (np.abs(hi - x64) <= eps).all()
        assert (np.abs(np.nextafter(lo, np.float32(-1)) - x64) > eps)[lo > 0].all()  # tight
        assert (np.abs(np.nextafter(hi, np.float32(2)) - x64) > eps)[hi < 1].all()
        sets = candidate_sets(x, book, eps, rule="exact")
        owner = np.repeat(np.arange(len(x)), np.diff(sets.offsets))
        probe = np.minimum(np.maximum(book.codes_[sets.members, 0], lo[owner]), hi[owner])
        np.testing.assert_array_equal(book.assign(probe.astype(np.float32)), sets.members)


@pytest.mark.parametrize("metric", ["linf", "l2"])
def test_rgb_certified_never_contradicted_by_sampling(metric):
    """Sound rule: sample perturbations of certified RGB images; none may change the prediction."""
    rng = np.random.default_rng(7)
    codes = rng.random((6, 3)).astype(np.float32)
    book = pixdisc.Codebook(codes, metric)
    x = rng.random((12, 3, 2, 2)).astype(np.float32)
    net = tiny_net(12, seed=4)
    with torch.no_grad():
        y = net(torch.from_numpy(book.transform(x, channel_axis=1))).argmax(1).numpy()
    eps = 0.05
    result = certify(net, book, x, y, eps, executor="serial", progress=False)
    assert (result.outcome == "certified").any()
    for i in np.flatnonzero(result.outcome == "certified"):
        noise = rng.uniform(-eps, eps, size=(2000, 3, 2, 2)).astype(np.float32)
        noise[:500] = np.sign(noise[:500]) * eps  # corners
        xs = np.clip(x[i][None] + noise, 0, 1).astype(np.float32)
        with torch.no_grad():
            pred = net(torch.from_numpy(book.transform(xs, channel_axis=1))).argmax(1).numpy()
        assert (pred == y[i]).all(), i


def test_paper_mode_unable_above_b_and_bab_decides():
    codes = np.array([[0.0], [1.0]], np.float32)
    book = pixdisc.Codebook(codes)
    x = np.full((2, 1, 4, 4), 0.5, np.float32)  # every pixel ambiguous: |S| = 2^16
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
    with torch.no_grad():
        net[0 + 1].weight.zero_()
        net[1].bias.copy_(torch.tensor([1.0, 0.0]))  # constant classifier: always class 0
    paper = certify(net, book, x, [0, 0], 0.1, mode="paper", b=10, executor="serial", progress=False)
    assert paper.outcome.tolist() == ["unable", "unable"]
    np.testing.assert_allclose(paper.log2_size, [16, 16])
    bab = certify(net, book, x, [0, 0], 0.1, mode="bab", executor="serial", progress=False)
    assert bab.outcome.tolist() == ["certified", "certified"]


def test_summary_statistics():
    codes = np.array([[0.0], [1.0]], np.float32)
    book = pixdisc.Codebook(codes)
    x = np.zeros((10, 1, 2, 2), np.float32)
    net = tiny_net(4, classes=2)
    with torch.no_grad():
        y = net(torch.zeros(10, 1, 2, 2)).argmax(1).numpy()
    y[:3] = 1 - y[:3]
    s = certify(net, book, x, y, 0.1, executor="serial", progress=False).summary()
    assert s["certified"] == 7 and s["failed"] == 3 and s["s_hat"] == 0.7
    assert s["lower_hoeffding"] == pytest.approx(0.7 - np.sqrt(np.log(100) / 20))
    assert s["lower_paper_formula"] == pytest.approx((1 - np.sqrt(np.log(100) / 20)) * 0.7)
    assert 0 < s["lower_clopper_pearson"] < 0.7
    # Few samples: the bounds would go negative; a fraction's lower bound is clamped at 0.
    small = certify(net, book, x[:2], y[:2], 0.1, executor="serial", progress=False).summary()
    assert small["n"] == 2 and small["lower_hoeffding"] == 0.0 and small["lower_paper_formula"] == 0.0
    from pixdisc.statistics import hoeffding_lower, paper_lower

    assert hoeffding_lower(1, 2, 0.01) == 0.0 and paper_lower(1, 2, 0.01) == 0.0
    assert paper_lower(9, 10, 0.5) == pytest.approx((1 - np.sqrt(np.log(2) / 20)) * 0.9)  # still the paper's


def test_process_pool_and_checkpoint_resume(tmp_path):
    codes = np.array([[0.0], [0.5], [1.0]], np.float32)
    book = pixdisc.Codebook(codes)
    rng = np.random.default_rng(11)
    x = rng.random((40, 1, 2, 2)).astype(np.float32)
    net = tiny_net(4, classes=2, seed=5)
    y = np.zeros(40, np.int64)
    serial = certify(net, book, x, y, 0.2, executor="serial", progress=False)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        threaded = certify(net, book, x, y, 0.2, executor=pool, chunk_size=7, progress=False,
                           checkpoint=tmp_path / "run.jsonl")
    np.testing.assert_array_equal(serial.outcome, threaded.outcome)
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    assert len(lines) == 41 and json.loads(lines[0])["format"] == "pixdisc-certify"
    # A resumed run computes nothing new and returns the same outcomes.
    again = certify(net, book, x, y, 0.2, executor="serial", progress=False, checkpoint=tmp_path / "run.jsonl")
    np.testing.assert_array_equal(again.outcome, serial.outcome)
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 41
    with pytest.raises(ValueError, match="eps"):
        certify(net, book, x, y, 0.3, executor="serial", progress=False, checkpoint=tmp_path / "run.jsonl")


_KILL_SCRIPT = r"""
import sys, time, numpy as np, torch, pixdisc
from pixdisc.certification import certify


class Slow(torch.nn.Module):
    # Each forward pass sleeps, so the run lasts long enough to be killed midway on any machine.
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        time.sleep(0.05)
        return self.net(x)


if __name__ == "__main__":  # worker processes are spawned and re-import this file
    torch.manual_seed(5)
    net = Slow(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10), torch.nn.ReLU(),
                                   torch.nn.Linear(10, 2))).eval()
    book = pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32))
    x = np.random.default_rng(11).random((60, 1, 2, 2)).astype(np.float32)
    y = np.zeros(60, np.int64)
    r = certify(net, book, x, y, 0.2, mode="paper", b=64, executor=sys.argv[2], workers=2, chunk_size=3,
                progress=False, checkpoint=sys.argv[1])
    np.save(sys.argv[1] + ".npy", r.outcome)
"""


@pytest.mark.slow
def test_killed_run_resumes_with_nothing_lost_or_repeated(tmp_path):
    """Kill the certifying process (and its workers) mid-run; the resumed run equals an uninterrupted one."""
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full = tmp_path / "full.jsonl"
    subprocess.run([sys.executable, str(script), str(full), "serial"], check=True, env=env, timeout=300)
    partial = tmp_path / "partial.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(partial), "processes"], env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until some records are written
        if partial.exists() and len(partial.read_text().splitlines()) > 7:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(partial.read_text().splitlines()) - 1
    assert 0 < written < 60
    subprocess.run([sys.executable, str(script), str(partial), "serial"], check=True, env=env, timeout=300)
    records = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
    assert sorted(r["index"] for r in records) == list(range(60))  # nothing lost, nothing repeated
    np.testing.assert_array_equal(np.load(str(partial) + ".npy"), np.load(str(full) + ".npy"))


@pytest.mark.slow
def test_dask_local_cluster():
    distributed = pytest.importorskip("distributed")
    codes = np.array([[0.0], [0.5], [1.0]], np.float32)
    book = pixdisc.Codebook(codes)
    x = np.random.default_rng(2).random((16, 1, 2, 2)).astype(np.float32)
    net = tiny_net(4, classes=2, seed=6)
    y = np.zeros(16, np.int64)
    expect = certify(net, book, x, y, 0.2, executor="serial", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            got = certify(net, book, x, y, 0.2, executor=client, chunk_size=4, progress=False)
    np.testing.assert_array_equal(got.outcome, expect.outcome)


def test_bad_inputs():
    book = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))
    net = tiny_net(4, classes=2)
    x = np.zeros((2, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="mode"):
        certify(net, book, x, [0, 0], 0.1, mode="magic")
    with pytest.raises(ValueError, match="eps"):
        certify(net, book, x, [0, 0], -1.0)
    with pytest.raises(ValueError, match="labels"):
        certify(net, book, x, [0], 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        certify(net, book, x + 2, [0, 0], 0.1)
    with pytest.raises(ValueError, match="codebook"):
        certify(net, None, x, [0, 0], 0.1)


def test_certified_training_beats_natural_training_on_the_certificate(tmp_path):
    """Bound-only certification (no branching): certified training makes far more of the bounds succeed."""
    from pixdisc.datasets import as_float_nchw, load_digits
    from pixdisc.models import build_model
    from pixdisc.train import train_certified, train_model

    data = load_digits()
    x, y = as_float_nchw(data.x_train)[:600], data.y_train[:600]
    x_test, y_test = as_float_nchw(data.x_test)[:150], data.y_test[:150]
    book = pixdisc.DensityCodebook(2, 0.5).fit(data.x_train)
    eps = 0.1
    options = dict(epochs=15, batch_size=32, progress=False)
    natural, _ = train_model(build_model("mlp", input_size=8, hidden=(64,)), x, y, **options)
    certified, history = train_certified(build_model("mlp", input_size=8, hidden=(64,)), x, y, book, eps=eps,
                                         warmup_epochs=1, ramp_epochs=6, checkpoint_path=tmp_path / "c.pt",
                                         **options)
    assert set(history) >= {"epoch", "loss", "accuracy", "verified", "eps"} and history["eps"][-1] == eps
    results = [certify(net, book, x_test, y_test, eps, bound="ibp", executor="serial", progress=False,
                       budget=Budget(nodes=0)) for net in (natural, certified)]
    rates = [(r.outcome == "certified").mean() for r in results]
    assert rates[1] > rates[0] + 0.1, rates
    # Resuming a finished run from its checkpoint changes nothing.
    again, _ = train_certified(build_model("mlp", input_size=8, hidden=(64,)), x, y, book, eps=eps,
                               warmup_epochs=1, ramp_epochs=6, checkpoint_path=tmp_path / "c.pt", **options)
    for a, b in zip(again.state_dict().values(), certified.state_dict().values()):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- issue 11 item 5: outcomes that mean what they say


def test_unrealized_member_does_not_stop_branch_and_bound():
    """Pixel 0 (gray 152/255, eps 0.1) admits code 0 that no input reaches; pixel 1 (130/255) really reaches
    it. The first misclassified member branch and bound meets uses pixel 0's unreachable code; instead of
    stopping there, the node splits pixel 0's codes by what pixdisc.realize verified, and the search goes
    on to the real attack at pixel 1."""
    codes = np.array([[0, 0, 0], [253, 253, 253]], np.uint8)
    book = pixdisc.Codebook(codes)
    x = np.ones((1, 3, 2, 2), np.float32)
    x[0, :, 0, 0] = np.float32(152) / np.float32(255)
    x[0, :, 0, 1] = np.float32(130) / np.float32(255)
    sets = candidate_sets(x, book, 0.1, channel_axis=1)
    assert sets.of(0).tolist() == [1, 0]  # the unreachable code is a candidate (the rule's slack)
    from pixdisc.realize import pixel_options

    options = pixel_options(x, book, 0.1)
    assert options.codes[options.offsets[0] : options.offsets[1]].tolist() == [1]
    assert options.codes[options.offsets[1] : options.offsets[2]].tolist() == [1, 0]
    net = all_high_net(4, float(book.codes_.max()), channels=3)
    result = certify(net, book, x, [0], 0.1, mode="bab", executor="serial", progress=False,
                     budget=Budget(leaf_log2=0))
    assert result.outcome.tolist() == ["failed"] and result.verified.all()
    z = result.z_codes[0]
    assert z[0] == 1 and z[1] == 0  # the real attack: pixel 1 low, pixel 0 as it must stay
    x_adv = result.counterexample[0]
    assert (np.abs(x_adv.astype(np.float64) - x[0].astype(np.float64)) <= 0.1).all()
    with torch.no_grad():
        assert int(net(torch.from_numpy(book.transform(x_adv[None], channel_axis=1))).argmax(1)) != 0


@pytest.mark.parametrize("mode", ["paper", "bab"])
def test_unable_records_its_reason(mode):
    codes = np.array([[0, 0, 0], [253, 253, 253]], np.uint8)
    book = pixdisc.Codebook(codes)
    x = np.full((1, 3, 2, 2), np.float32(152) / np.float32(255), np.float32)
    net = all_high_net(4, float(book.codes_.max()), channels=3)
    from pixdisc.certification.engine import _Engine

    engine = _Engine(net, book, 0.1, mode, 64.0, "crown", "auto", Budget(), 64, (3, 2, 2), "cpu")
    records = engine.certify_samples(engine.prepare(x, np.array([0]), [0]))
    assert [r.outcome for r in records] == ["unable"] and not records[0].verified
    assert "no verified input realizes" in records[0].reason and "pixel" in records[0].reason
    assert records[0].z_codes is not None
    from pixdisc.certification.result import _Record

    line = json.dumps(records[0].to_json())  # the checkpoint line
    back = _Record.from_json(json.loads(line))
    assert back.reason == records[0].reason and back.outcome == "unable"
    old = json.loads(line)
    del old["reason"]  # a checkpoint written before the field existed
    assert _Record.from_json(old).reason == ""
    # Paper mode above b says so.
    engine = _Engine(net, book, 0.1, "paper", 1.0, "crown", "auto", Budget(), 64, (3, 2, 2), "cpu")
    records = engine.certify_samples(engine.prepare(x, np.array([0]), [0]))
    assert records[0].outcome == "unable" and "b = 1" in records[0].reason


def elementwise_exhaustive(net, book, image, label, eps):
    """Ground truth for a one-channel codebook on C-channel images: every value is its own pixel."""
    sets = candidate_sets(image.reshape(1, 1, -1), book, eps, rule="exact", channel_axis=1)
    choices = [book.codes_[sets.of(p), 0] for p in range(image.size)]
    with torch.no_grad():
        for combo in itertools.product(*choices):
            if int(net(torch.tensor(np.array(combo, np.float32).reshape(1, *image.shape))).argmax(1)) != label:
                return "failed"
    return "certified"


@pytest.mark.parametrize("mode", ["paper", "bab"])
def test_one_channel_codebook_on_rgb_images_works_element_wise(mode):
    """It used to pass the channel check and crash (shape '[-1, 3, 2, 2]' is invalid)."""
    rng = np.random.default_rng(2)
    book = pixdisc.Codebook(np.array([[0.0], [0.3], [0.6], [1.0]], np.float32))
    x = (rng.integers(0, 256, size=(10, 3, 1, 2)) / np.float32(255)).astype(np.float32)
    net = tiny_net(6, seed=2)
    with torch.no_grad():
        y = net(torch.from_numpy(book.transform(x))).argmax(1).numpy()  # element-wise, as everywhere
    y[::4] = (y[::4] + 1) % 3
    result = certify(net, book, x, y, 0.1, mode=mode, b=64, executor="serial", progress=False,
                     budget=Budget(nodes=10_000, seconds=60, leaf_log2=3))
    assert (result.outcome != "unable").all()
    for i in range(len(x)):
        assert result.outcome[i] == elementwise_exhaustive(net, book, x[i], y[i], 0.1), i
    for i in np.flatnonzero(result.outcome == "failed"):
        x_adv = result.counterexample[i]
        assert x_adv.shape == x[i].shape and result.verified[i]
        assert (np.abs(x_adv.astype(np.float64) - x[i].astype(np.float64)) <= 0.1).all()
        with torch.no_grad():
            assert int(net(torch.from_numpy(book.transform(x_adv[None]))).argmax(1)) != y[i]


def test_codebook_channels_that_fit_no_image_are_refused_clearly():
    from pixdisc.certification.engine import _Engine

    book2 = pixdisc.Codebook(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32))
    net = tiny_net(12)
    with pytest.raises(ValueError, match="channels"):
        certify(net, book2, np.zeros((2, 3, 2, 2), np.float32), [0, 0], 0.1, executor="serial", progress=False)
    with pytest.raises(ValueError, match=r"\(3, 2, 2\).*3 channels.*2"):
        _Engine(net, book2, 0.1, "bab", 64.0, "crown", "auto", Budget(), 64, (3, 2, 2), "cpu")


def test_certify_table_shows_b_only_for_paper_mode():
    from pixdisc.report import certify_table

    row = {"eps": 0.1, "b": 20.0, "unable_rate": 0.1, "certified_rate": 0.8, "failed_rate": 0.1,
           "lower_hoeffding": 0.5, "lower_clopper_pearson": 0.6, "lower_paper_formula": 0.55, "wall_seconds": 1.0}
    bab = certify_table([{**row, "mode": "bab"}])
    assert "| b |" not in bab and "20" not in bab
    assert bab.splitlines()[0].count("|") == bab.splitlines()[1].count("|") == bab.splitlines()[2].count("|")
    paper = certify_table([{**row, "mode": "paper"}])
    assert "| eps | b |" in paper and "| 0.100 | 20 |" in paper
    mixed = certify_table([{**row, "mode": "paper"}, {**row, "mode": "bab"}]).splitlines()
    assert "| 0.100 | 20 |" in mixed[2] and "| 0.100 | - |" in mixed[3]
    assert len({line.count("|") for line in mixed}) == 1


def test_certify_result_carries_each_unable_reason():
    codes = np.array([[0, 0, 0], [253, 253, 253]], np.uint8)
    book = pixdisc.Codebook(codes)
    x = np.full((2, 3, 2, 2), np.float32(152) / np.float32(255), np.float32)
    net = all_high_net(4, float(book.codes_.max()), channels=3)
    result = certify(net, book, x, np.array([0, 0]), 0.1, mode="paper", b=1.0, executor="serial", progress=False)
    assert list(result.outcome) == ["unable", "unable"]
    assert all("b = 1" in reason for reason in result.reason)


def test_engine_margins_escalate_only_what_cheaper_tiers_leave_open(monkeypatch):
    """Each tier runs only on the boxes the tiers before it did not prove; every box gets the best tier's decision."""
    from pixdisc import bounds
    from pixdisc.bounds.crown import _Propagator
    from pixdisc.certification.engine import _MARGIN_TOLERANCE, _Engine

    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12),
                              torch.nn.ReLU(), torch.nn.Linear(12, 3))
    book = pixdisc.Codebook(np.array([[0], [128], [255]], np.uint8))
    engine = _Engine(net, book, 0.1, "bab", 64.0, "crown", "auto", Budget(), 64, (1, 4, 4), "cpu")
    rng = np.random.default_rng(0)
    centres = rng.random((60, 16))
    widths = rng.choice([0.0, 0.01, 0.05, 0.3], size=(60, 1)) * rng.random((60, 16))
    boxes = [(np.clip(c - w, 0, 1), np.clip(c + w, 0, 1)) for c, w in zip(centres, widths)]
    labels = [int(v) for v in rng.integers(0, 3, 60)]
    calls = []
    real = _Propagator.crown_lower

    def counting(self, A, intermediate, intersect_ibp):
        calls.append((intermediate, self.batch))
        return real(self, A, intermediate, intersect_ibp)

    monkeypatch.setattr(_Propagator, "crown_lower", counting)
    worst, escalation = engine._margins(boxes, labels, bounds.Meter(), "ibp", "crown")
    monkeypatch.undo()
    lower = torch.from_numpy(np.stack([b[0] for b in boxes])).reshape(-1, 1, 4, 4)
    upper = torch.from_numpy(np.stack([b[1] for b in boxes])).reshape(-1, 1, 4, 4)
    y = torch.tensor(labels)
    with torch.no_grad():
        full = {method: bounds.margin_lower_bound(net, lower, upper, y, method=method, dtype=torch.float64).scatter(
            1, y[:, None], float("inf")).min(1).values.numpy() - _MARGIN_TOLERANCE
            for method in ("ibp", "crown-ibp", "crown")}
    # Each tier is intersected with the ones before: the decisions are those of the best tier, box by box.
    best = np.maximum(np.maximum(full["ibp"], full["crown-ibp"]), full["crown"])
    np.testing.assert_array_equal(worst > 0, best > 0)
    ibp_open = int((full["ibp"] <= 0).sum())
    crown_ibp_open = int((np.maximum(full["ibp"], full["crown-ibp"]) <= 0).sum())
    assert 0 < crown_ibp_open < ibp_open < 60 and (worst > 0).sum() > 60 - crown_ibp_open  # the case is informative
    assert calls == [("ibp", ibp_open), ("crown", crown_ibp_open)]
    assert escalation.tier == ["ibp" if full["ibp"][i] > 0 else "crown-ibp" if full["crown-ibp"][i] > 0 else "crown"
                               for i in range(60)]


def test_search_failures_are_checked_and_the_search_can_be_turned_off():
    """The S(x) search decides "failed" only with an input that T and F, run again, misclassify."""
    from pixdisc.certification.engine import _Engine

    net, book, codes, x, y = _three_code_task()
    budget = Budget(nodes=10_000, seconds=None, work=10_000, leaf_log2=0)
    with_search = certify(net, book, x, y, 0.2, budget=budget, executor="serial", progress=False)
    without = certify(net, book, x, y, 0.2, budget=Budget(nodes=10_000, seconds=None, work=10_000, leaf_log2=0,
                                                          search=None), executor="serial", progress=False)
    # The search decides some failures first; it never changes what is certified.
    assert "s(x) search" in set(with_search.method) and "s(x) search" not in set(without.method)
    np.testing.assert_array_equal(with_search.outcome == "certified", without.outcome == "certified")
    engine = _Engine(net, book, 0.2, "bab", 64.0, "crown", "auto", budget, 64, (1, 2, 2), "cpu")
    samples = engine.prepare(x, y, np.arange(len(x)))
    i = int(np.flatnonzero(with_search.method == "s(x) search")[0])
    x_adv = with_search.counterexample[i]
    assert engine._checked_failure(samples[i], x_adv).outcome == "failed"
    assert engine._checked_failure(samples[i], x[i]) is None  # T(x) is classified correctly
    outside = np.clip(x_adv + np.float32(0.3) * np.sign(x_adv - x[i] + 1e-3), 0, 1).astype(np.float32)
    assert engine._checked_failure(samples[i], outside) is None  # more than eps away


def test_last_search_breaks_what_branch_and_bound_leaves_open():
    """Class 0 unless two pixels go low: no single change of T(x) flips it, so a search of single changes
    misses it; with no branching nodes, the stronger search on the held-back budget must find the pair."""
    pixels = 4
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(pixels, 2)).eval()
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0].fill_(1.0)
        net[1].bias.copy_(torch.tensor([-(pixels - 1.5), 0.0]))
    book = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))
    x = np.full((1, 1, 2, 2), 0.55, np.float32)  # T(x) = all high; each pixel can reach 0 within eps 0.1
    single_changes = SearchBudget(restarts=0, local_steps=1, enumerate_log2=0)
    light = certify(net, book, x, [0], 0.1, executor="serial", progress=False,
                    budget=Budget(nodes=0, seconds=None, work=10_000, search=single_changes))
    assert light.outcome.tolist() == ["failed"] and light.method.tolist() == ["s(x) search, last"]
    x_adv = light.counterexample[0]
    assert (np.abs(x_adv - x[0]) <= 0.1).all() and (np.asarray(book.transform(x_adv[None])) == 0).sum() >= 2
    without = certify(net, book, x, [0], 0.1, executor="serial", progress=False,
                      budget=Budget(nodes=0, seconds=None, work=10_000, search=None))
    assert without.outcome.tolist() == ["unable"]  # the bounds alone cannot decide it
