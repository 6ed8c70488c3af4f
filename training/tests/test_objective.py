"""The trading objective, turnover targeting and the bootstrap (training/quantd_train/objective.py),
and a smoke run of the study on a slice of the recorded ticks."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import study  # noqa: E402
from quantd_train import objective  # noqa: E402

QUANTD = REPO / "target" / "release" / "quantd"
SHARED = REPO.parent / "shared" / "data"


def test_the_utility_equals_a_hand_computation():
    score = torch.tensor([2.0, -1.0, 0.0])
    ret = torch.tensor([1.0, -3.0, 2.0])
    half = torch.tensor([0.5, 0.5, 0.5])
    p = np.tanh(np.array([2.0, -1.0, 0.0]) / 2.0)             # temperature 2
    change = np.abs(np.diff(np.concatenate([[0.0], p])))       # from flat
    pnl = p * np.array([1.0, -3.0, 2.0]) - change * 0.5
    mv = -(pnl.mean() - 0.1 * pnl.var())
    sharpe = -pnl.mean() / (pnl.std() + 1e-6)
    assert float(objective.utility_loss(score, ret, half, 2.0, "mean_variance", 0.1)) == pytest.approx(mv, rel=1e-6)
    assert float(objective.utility_loss(score, ret, half, 2.0, "sharpe")) == pytest.approx(sharpe, rel=1e-5)
    with pytest.raises(ValueError):
        objective.utility_loss(score, ret, half, 2.0, "kelly")


def test_the_gradient_pushes_the_position_toward_the_return():
    """Minus the utility falls as the score follows the next return (costs 0): its gradient with
    respect to each score has the opposite sign of that tick's return."""
    score = torch.zeros(4, requires_grad=True)
    ret = torch.tensor([2.0, -1.0, 3.0, -0.5])
    loss = objective.utility_loss(score, ret, torch.zeros(4), 1.0, "mean_variance", 0.0)
    loss.backward()
    assert np.all(np.sign(score.grad.numpy()) == -np.sign(ret.numpy()))
    # A cost on changes pulls a lone position back toward flat.
    score = torch.tensor([0.5, 0.0], requires_grad=True)
    objective.utility_loss(score, torch.zeros(2), torch.ones(2), 1.0, "mean_variance", 0.0).backward()
    assert score.grad[0] > 0


def ar1(n, phi, rng):
    s = np.zeros(n)
    for i in range(1, n):
        s[i] = phi * s[i - 1] + rng.normal()
    return s


@pytest.mark.parametrize("target", [1.0, 3.0, 6.0])
def test_turnover_targeting_hits_its_target_on_validation(target):
    rng = np.random.default_rng(1)
    segments = [ar1(30_000, 0.97, rng), ar1(20_000, 0.97, rng)]  # long enough that one change is a small step
    th, reached = objective.target_thresholds(segments, target)
    assert reached == pytest.approx(target, rel=0.05)
    assert objective.segments_turnover(segments, th) == reached
    assert th[1] == th[0] / 2 and th[2] > th[0]


def test_the_bootstrap_is_reproducible_with_a_seed():
    rng = np.random.default_rng(0)
    x = ar1(5000, 0.9, rng)
    stat = lambda idx: float(x[idx].mean())  # noqa: E731
    a = objective.bootstrap(stat, len(x), block=200, resamples=300, seed=3)
    assert a == objective.bootstrap(stat, len(x), block=200, resamples=300, seed=3)
    assert a != objective.bootstrap(stat, len(x), block=200, resamples=300, seed=4)
    assert a[0] < x.mean() < a[1]
    idx = objective.block_indices(1000, 100, np.random.default_rng(0))
    assert len(idx) == 1000 and np.all(np.diff(idx.reshape(10, 100), axis=1) == 1), "blocks of consecutive ticks"
    assert objective.within_noise((-1.0, 2.0)) and not objective.within_noise((0.5, 2.0))


def test_the_study_runs_on_a_slice_and_writes_its_report_section(tmp_path):
    """Every committed variant at the common turnover and the MSE/utility models, on 4,000 ticks
    per symbol (a smoke run: few epochs, few resamples)."""
    models = tmp_path / "models"
    for arch in ("mlp", "tcn"):
        for d in (REPO / "models" / f"quantd-{arch}").iterdir():
            if d.name in ("2", "2-fp32"):
                shutil.copytree(d, models / f"quantd-{arch}" / d.name)
    report = models / "quantd-mlp" / "2" / "REPORT.md"
    rc = study.main(["--quantd", str(QUANTD), "--shared", str(SHARED), "--models", str(models), "--cache",
                     str(tmp_path / "cache"), "--archs", "mlp,tcn", "--max-rows", "4000", "--epochs", "2",
                     "--utility-epochs", "1", "--qat-epochs", "1", "--forms", "sharpe", "--resamples", "50",
                     "--turnover-target", "20", "--json", str(tmp_path / "study.json"), "--quiet"])
    assert rc == 0
    text = report.read_text()
    assert text.count(study.BEGIN) == 1 and "### MSE against the utility objective" in text
    import json
    doc = json.loads((tmp_path / "study.json").read_text())
    assert [r["version"] for r in doc["variants"]] == ["2-fp32", "2", "2-fp32", "2"]
    assert [r["model"] for r in doc["objective"]] == ["MSE FP32", "MSE QAT", "utility (sharpe) FP32", "utility (sharpe) QAT"]
    for r in doc["variants"] + doc["objective"]:
        assert -1 <= r["ic_ci"][0] < r["ic_ci"][1] <= 1, r
        assert r["pnl_ci"][0] < r["pnl_ci"][1], r
        assert r["turnover_val"] > 0
    # Run again: the section is replaced, not appended.
    assert study.main(["--quantd", str(QUANTD), "--shared", str(SHARED), "--models", str(models), "--cache",
                       str(tmp_path / "cache"), "--archs", "mlp", "--max-rows", "4000", "--epochs", "1",
                       "--utility-epochs", "1", "--qat-epochs", "1", "--forms", "sharpe", "--resamples", "20",
                       "--turnover-target", "20", "--quiet"]) == 0
    assert report.read_text().count(study.BEGIN) == 1


def test_make_train_keeps_the_study_section_of_a_report(tmp_path):
    from quantd_train import report
    p = tmp_path / "REPORT.md"
    assert report.kept_study(p) == ""
    p.write_text(f"# old report\n\n{report.STUDY_BEGIN}\nthe study\n{report.STUDY_END}\n\ntrailing\n")
    assert report.kept_study(p) == f"\n{report.STUDY_BEGIN}\nthe study\n{report.STUDY_END}\n"
