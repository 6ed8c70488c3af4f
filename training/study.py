#!/usr/bin/env python3
"""The fair comparison and the trading objective (`make study`), on the same data and split as
`make train`:

1. Every committed variant of every architecture (models/quantd-<arch>/2*) is scored on the
   validation and test periods, and its policy thresholds are set so that it trades the same
   turnover on validation (`--turnover-target`, |position change| per 1,000 ticks): the FP32 twins
   no longer trade twice as often as the INT8 variants because of their own score scale.
2. The MLP is trained on the MSE (as `make train` does), then fine-tuned on a differentiable
   utility of the strategy's returns (objective.utility_loss: tanh position, next-tick return,
   half-spread cost on every change; mean-variance or Sharpe), in FP32 and in QAT (the seed's
   joint quantization-aware and trading-goal training).
3. Every IC and net PnL on the test period comes with a moving-block bootstrap interval (blocks of
   500 consecutive test ticks, 1,000 resamples, seed 0), and every variant's difference from its
   FP32 twin (or the utility models' from the MSE one) with a paired interval and a verdict: a
   difference whose interval holds 0 is within noise.

The result is written into models/quantd-mlp/2/REPORT.md between study markers (and as JSON with
--json).

    study.py --quantd target/release/quantd --shared ../shared/data
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantd_train import data, evaluate, fit, objective, ortq  # noqa: E402
from quantd_train.report import STUDY_BEGIN as BEGIN, STUDY_END as END  # noqa: E402
ARCH_WINDOW = {"mlp": 1, "tcn": 16, "lstm": 16, "transformer": 16}


def next_returns(ds, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's next-tick mid return and half its quoted spread, bps (0 at a symbol's last row)."""
    spread = ds.x[idx, ds.feature_names.index("spread_bps")].astype(np.float64) / 2
    ret = np.zeros(len(idx))
    nxt = idx + 1
    ok = (nxt < len(ds.mid)) & (ds.symbol[np.minimum(nxt, len(ds.mid) - 1)] == ds.symbol[idx])
    ret[ok] = (ds.mid[nxt[ok]] / ds.mid[idx[ok]] - 1) * 1e4
    return ret, spread


def segments(ds, idx: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    """`values` (aligned with `idx`) cut per symbol (idx is time-ordered within a symbol)."""
    return [values[ds.symbol[idx] == s] for s in np.unique(ds.symbol[idx])]


def blocks(ds, idx: np.ndarray, x: np.ndarray, length: int) -> fit.Blocks:
    ret, half = next_returns(ds, idx)
    bounds = []
    for s in np.unique(ds.symbol[idx]):
        rows = np.flatnonzero(ds.symbol[idx] == s)
        bounds += [(int(a), int(min(a + length, rows[-1] + 1))) for a in range(rows[0], rows[-1] + 1, length)
                   if min(a + length, rows[-1] + 1) - a > 8]
    return fit.Blocks(x.astype(np.float32), ret, half, bounds)


class Evaluator:
    """Test-period figures at a common validation turnover, with bootstrap intervals."""

    def __init__(self, ds, target: float, block: int, resamples: int):
        self.ds, self.target, self.block, self.resamples = ds, target, block, resamples
        self.va, self.te = ds.split["val"], ds.split["test"]
        self.y = ds.y[self.te]

    def figures(self, s_val: np.ndarray, s_te: np.ndarray) -> dict:
        th, t_val = objective.target_thresholds(segments(self.ds, self.va, s_val), self.target)
        # The same policy PnL as REPORT.md's (evaluate.pnl), per test tick for the bootstrap.
        _, gross, cost, change = evaluate.policy_pnl(self.ds, self.te, s_te, th)
        pnl = gross - cost
        n = len(self.te)
        ic = objective.ic_of(s_te, self.y)
        boot = dict(n=n, block=self.block, resamples=self.resamples)
        return {
            "policy": [float(v) for v in th], "turnover_val": t_val,
            "turnover_test": float(change.sum() / n * objective.TURNOVER_PER),
            "ic": ic(np.arange(n)), "ic_ci": objective.bootstrap(ic, **boot),
            "pnl_net_bps": float(pnl.sum()),
            "pnl_ci": objective.bootstrap(lambda i: float(pnl[i].sum() * n / len(i)), **boot),
            "_pnl": pnl, "_score": s_te,
        }

    def paired(self, a: dict, b: dict) -> dict:
        """a − b on the same resamples: IC and net PnL differences with intervals."""
        n = len(self.te)
        boot = dict(n=n, block=self.block, resamples=self.resamples)
        ia, ib = objective.ic_of(a["_score"], self.y), objective.ic_of(b["_score"], self.y)
        d_ic = objective.bootstrap(lambda i: ia(i) - ib(i), **boot)
        d_pnl = objective.bootstrap(lambda i: float((a["_pnl"][i] - b["_pnl"][i]).sum() * n / len(i)), **boot)
        return {"d_ic": a["ic"] - b["ic"], "d_ic_ci": d_ic, "d_pnl": a["pnl_net_bps"] - b["pnl_net_bps"],
                "d_pnl_ci": d_pnl, "noise_ic": objective.within_noise(d_ic), "noise_pnl": objective.within_noise(d_pnl)}


def committed(models: Path, arch: str) -> list[tuple[str, Path]]:
    """The committed variants of quantd-<arch>: (variant, dir), FP32 first."""
    out = []
    for d in sorted((models / f"quantd-{arch}").iterdir()):
        if (d / "model.onnx").is_file() and d.name.startswith("2"):
            out.append(("fp32" if d.name.endswith("-fp32") else d.name.removeprefix("2").lstrip("-") or "release", d))
    return sorted(out, key=lambda v: v[0] != "fp32")


def sharpe(pnl: np.ndarray) -> float:
    """Per-tick Sharpe ratio of the net PnL over the test period (not annualised)."""
    return float(pnl.mean() / (pnl.std() + 1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantd", default="target/release/quantd")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--cache", type=Path, default=Path("training/.cache"))
    ap.add_argument("--archs", default="mlp,tcn,lstm,transformer")
    ap.add_argument("--turnover-target", type=float, default=2.5, help="|position change| per 1,000 validation ticks")
    ap.add_argument("--block", type=int, default=500, help="bootstrap block, test ticks")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=20, help="MSE epochs of the MLP")
    ap.add_argument("--utility-epochs", type=int, default=6)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--forms", default="mean_variance,sharpe")
    ap.add_argument("--max-rows", type=int, default=0, help="per symbol (0: all); for smoke runs")
    ap.add_argument("--report", type=Path, help="default: <models>/quantd-mlp/2/REPORT.md")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    ds = data.load("ticks", args.quantd, args.shared, args.cache, 1_000_000_000, warmup=100, window=16,
                   max_rows_per_symbol=args.max_rows or None)
    ev = Evaluator(ds, args.turnover_target, args.block, args.resamples)
    va, te = ds.split["val"], ds.split["test"]
    rows = []
    for arch in [a for a in args.archs.split(",") if a]:
        w = ARCH_WINDOW[arch]
        twin = None
        for variant, d in committed(args.models, arch):
            f = ev.figures(ortq.predict(d / "model.onnx", ds.windows(va, w)), ortq.predict(d / "model.onnx", ds.windows(te, w)))
            row = {"arch": arch, "variant": variant, "version": d.name, **f}
            if variant == "fp32":
                twin = f
            elif twin is not None:
                row.update(ev.paired(f, twin))
            rows.append(row)
            if not args.quiet:
                print(f"  {arch} {d.name:<16} turnover {f['turnover_val']:.2f}/{f['turnover_test']:.2f}  ic {f['ic']:+.3f}  "
                      f"pnl {f['pnl_net_bps']:+8.1f} {np.round(f['pnl_ci'], 1)}", flush=True)

    # The trading objective on the MLP: MSE, then utility fine-tuning, in FP32 and QAT.
    tr = ds.split["train"]
    x_tr, x_va, x_te = ds.x[tr], ds.x[va], ds.x[te]
    clip = 5 * np.std(ds.y[tr])
    y_tr, y_va = np.clip(ds.y[tr], -clip, clip), np.clip(ds.y[va], -clip, clip)
    mean, std = x_tr.mean(0), x_tr.std(0)
    scale = 1.0 / np.where(std > 1e-9, std, 1.0)
    mse = fit.fit_fp32("mlp", x_tr, y_tr, x_va, y_va, 128, 1, mean, scale, args.epochs, progress=not args.quiet)
    temperature = float(np.std(fit.predict_torch(mse.model, x_tr[::10]))) or 1.0
    b_tr, b_va = blocks(ds, tr, x_tr, 256), blocks(ds, va, x_va, 256)
    work = args.cache / "study"
    work.mkdir(parents=True, exist_ok=True)

    def scored(model, name):
        p = fit.export_onnx(model, x_tr[:8], work / f"{name}.onnx")
        return ev.figures(ortq.predict(p, x_va), ortq.predict(p, x_te))

    objective_rows = [{"model": "MSE FP32", **scored(mse.model, "mse-fp32"), "epochs": mse.epochs}]
    base = objective_rows[0]
    q = fit.fit_qat(mse.model, x_tr, y_tr, x_va, y_va, args.qat_epochs, progress=not args.quiet)
    objective_rows.append({"model": "MSE QAT", **scored(q.model, "mse-qat"), "epochs": q.epochs})
    for form in [f for f in args.forms.split(",") if f]:
        u = fit.fit_utility(mse.model, b_tr, b_va, args.utility_epochs, temperature, form, progress=not args.quiet)
        objective_rows.append({"model": f"utility ({form}) FP32", **scored(u.model, f"utility-{form}-fp32"),
                               "epochs": u.epochs})
        uq = fit.fit_qat(u.model, x_tr, y_tr, x_va, y_va, args.qat_epochs, progress=not args.quiet,
                         utility=(b_tr, b_va, temperature, form))
        objective_rows.append({"model": f"utility ({form}) QAT", **scored(uq.model, f"utility-{form}-qat"),
                               "epochs": uq.epochs})
    for r in objective_rows:
        r["sharpe_per_tick"] = sharpe(r["_pnl"])
        if r is not base:
            r.update(ev.paired(r, base))
        if not args.quiet:
            print(f"  {r['model']:<28} turnover {r['turnover_val']:.2f}  ic {r['ic']:+.3f}  pnl {r['pnl_net_bps']:+8.1f} "
                  f"{np.round(r['pnl_ci'], 1)}", flush=True)
    span = {s: float((ds.ts[te][ds.symbol[te] == s].max() - ds.ts[te][ds.symbol[te] == s].min()) / 60e9)
            for s in np.unique(ds.symbol[te])}
    doc = {"turnover_target": args.turnover_target, "block": args.block, "resamples": args.resamples,
           "temperature": temperature, "test_rows": len(te), "test_minutes": span, "seconds": time.time() - t0,
           "variants": [clean(r) for r in rows], "objective": [clean(r) for r in objective_rows]}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    report = args.report or args.models / "quantd-mlp" / "2" / "REPORT.md"
    write(report, markdown(doc))
    print(f"study written into {report} in {time.time() - t0:.0f} s")
    return 0


def clean(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def ci(c) -> str:
    return f"[{c[0]:+.3f}, {c[1]:+.3f}]"


def ci1(c) -> str:
    return f"[{c[0]:+.1f}, {c[1]:+.1f}]"


def markdown(doc: dict) -> str:
    span = ", ".join(f"{s} {m:.1f} min" for s, m in doc["test_minutes"].items())
    lines = [BEGIN, "", "## Fair comparison and the trading objective (`make study`)", "",
             f"`training/study.py` on the same data and split as `make train`. Every variant's thresholds are set so "
             f"that it trades the same turnover on the validation period, {doc['turnover_target']} |position change| "
             "per 1,000 ticks (bisection on the entry quantile; exit half of it, full size at the 98th percentile); "
             "a model with few distinct output values cannot hit it exactly, so both the validation and the test "
             f"turnover are shown. Test period: {doc['test_rows']:,} ticks ({span}). Intervals: moving-block bootstrap "
             f"of the test period ({doc['block']} consecutive ticks a block, {doc['resamples']} resamples, seed 0), "
             "95 %; a difference is paired (the same resamples for both) and is *within noise* when its interval "
             "holds 0. PnL: bps of one unit of notional, net of half the quoted spread on every position change, "
             "summed over the symbols.", "",
             "### Every committed variant at the common turnover", "",
             "| arch | version | turnover val / test | IC [95 %] | net PnL bps [95 %] | IC − FP32 [95 %] | PnL − FP32 [95 %] | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["variants"]:
        if "d_ic" in r:
            verdict = "within noise" if r["noise_ic"] and r["noise_pnl"] else (
                "IC differs" if not r["noise_ic"] and r["noise_pnl"] else
                "PnL differs" if r["noise_ic"] else "IC and PnL differ")
            diff = f"{r['d_ic']:+.3f} {ci(r['d_ic_ci'])} | {r['d_pnl']:+.1f} {ci1(r['d_pnl_ci'])} | {verdict}"
        else:
            diff = "— | — | (the twin)"
        lines.append(f"| {r['arch']} | {r['version']} | {r['turnover_val']:.2f} / {r['turnover_test']:.2f} | "
                     f"{r['ic']:+.3f} {ci(r['ic_ci'])} | {r['pnl_net_bps']:+.1f} {ci1(r['pnl_ci'])} | {diff} |")
    off = [f"quantd-{r['arch']}@{r['version']}" if "version" in r else r["model"] for r in doc["variants"] + doc["objective"]
           if abs(r["turnover_val"] - doc["turnover_target"]) > 0.2 * doc["turnover_target"]]
    if off:
        lines += ["", f"Off the target by more than 20 %: {', '.join(off)}. A QAT model's output moves in quantization "
                  "steps, so its turnover moves in steps too, and the thresholds reach only the nearest one."]
    noise = sum(1 for r in doc["variants"] if "d_ic" in r and r["noise_ic"] and r["noise_pnl"])
    quantized = sum(1 for r in doc["variants"] if "d_ic" in r)
    lines += ["", f"{noise} of {quantized} quantized variants are within noise of their FP32 twin on both IC and net PnL "
              "at the common turnover.", "",
              "### MSE against the utility objective (MLP, FP32 and QAT)", "",
              f"The MSE model is trained as `make train` trains the MLP; the utility models fine-tune it on minus the "
              "utility of blocks of 256 consecutive training ticks (positions tanh(score / T), T = the MSE model's "
              f"score standard deviation on training, {doc['temperature']:.3f} bps; mean-variance with λ = 0.1, or "
              "Sharpe), early-stopped on the validation blocks; the QAT rows fine-tune the same way with fake "
              "quantization. All at the common turnover. Sharpe: per tick, of the test period's net PnL, not "
              "annualised (the period is minutes long).", "",
              "| model | turnover val / test | IC [95 %] | net PnL bps [95 %] | Sharpe per tick | PnL − MSE FP32 [95 %] | verdict |",
              "|---|---|---|---|---|---|---|"]
    for r in doc["objective"]:
        d = (f"{r['d_pnl']:+.1f} {ci1(r['d_pnl_ci'])} | {'within noise' if r['noise_pnl'] else ('better' if r['d_pnl'] > 0 else 'worse')}"
             if "d_pnl" in r else "— | (the baseline)")
        lines.append(f"| {r['model']} | {r['turnover_val']:.2f} / {r['turnover_test']:.2f} | {r['ic']:+.3f} {ci(r['ic_ci'])} | "
                     f"{r['pnl_net_bps']:+.1f} {ci1(r['pnl_ci'])} | {r['sharpe_per_tick']:+.4f} | {d} |")
    better = [r["model"] for r in doc["objective"] if "d_pnl" in r and r["model"].startswith("utility")
              and not r["noise_pnl"] and r["d_pnl"] > 0]
    lines += ["", ("The utility objective beats the MSE objective on net PnL beyond noise for: " + ", ".join(better) + "."
                   if better else "The utility objective does not beat the MSE objective on net PnL beyond noise here: "
                   "no utility model's paired interval lies above zero. With minutes of test data most differences "
                   "are within noise."), "",
              "The released models ship with the thresholds `make train` set (their manifests' `[policy]`); the "
              "thresholds above are the study's, for comparing variants fairly.", "", END]
    return "\n".join(lines)


def write(report: Path, section: str) -> None:
    text = report.read_text() if report.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    report.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
