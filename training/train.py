#!/usr/bin/env python3
"""quantd's training pipeline: features from `quantd features`, FP32 training, quantization-aware
fine-tuning exported as ONNX QDQ, post-training static (MinMax / Percentile / Entropy) and dynamic
quantization as baselines, the integer-kernel proof, evaluation on the held-out test period with
latency measured by the Rust server's own session, model version directories and REPORT.md.

    train.py --quantd target/release/quantd --shared ../shared/data --out models

Every architecture is written as models/quantd-<arch>/<V> (its chosen INT8 variant, the one
served by default) with its other variants beside it as <V>-fp32, <V>-ptq-minmax, ... so they
can be served (`--model quantd-mlp@2-fp32`) and replayed side by side.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantd_train import data, evaluate, fit, ortq, report  # noqa: E402
from quantd_train.artifacts import verify_rows, write_version  # noqa: E402

VARIANTS = {
    # arch: variants built, the one served as <V> first
    "mlp": ["qat", "fp32", "ptq-minmax", "ptq-percentile", "ptq-entropy", "dynamic"],
    "tcn": ["qat", "fp32", "ptq-minmax", "ptq-percentile", "ptq-entropy"],
    "lstm": ["dynamic", "fp32"],
    "transformer": ["qat", "fp32", "ptq-percentile"],
}
DEFAULT_VARIANT = {"mlp": "qat", "tcn": "qat", "lstm": "dynamic", "transformer": "qat"}


def build_variants(arch, ds, args, hidden, window, work: Path, wanted=None, progress=True):
    """Trains FP32 and (if wanted) QAT, derives the wanted PTQ/dynamic variants (default: all of
    the architecture's), with int8 weights in `args.weight_range`; returns {variant: (onnx path,
    seconds, extra)}."""
    tr, va = ds.split["train"], ds.split["val"]
    x_tr, x_va = ds.windows(tr, window), ds.windows(va, window)
    clip = 5 * np.std(ds.y[tr])
    y_tr, y_va = np.clip(ds.y[tr], -clip, clip), np.clip(ds.y[va], -clip, clip)
    flat = ds.x[tr]
    mean, std = flat.mean(0), flat.std(0)
    scale = 1.0 / np.where(std > 1e-9, std, 1.0)
    out = {}
    f32 = fit.fit_fp32(arch, x_tr, y_tr, x_va, y_va, hidden, window, mean, scale, args.epochs, progress=progress)
    p = fit.export_onnx(f32.model, x_tr[:8], work / f"{arch}-fp32.onnx")
    out["fp32"] = (p, f32.seconds, {"val_mse": f32.val_mse, "epochs": f32.epochs})
    wanted = wanted or VARIANTS[arch]
    if "qat" in wanted:
        q = fit.fit_qat(f32.model, x_tr, y_tr, x_va, y_va, args.qat_epochs, progress=progress,
                        weight_range=args.weight_range)
        p = fit.export_onnx(q.model, x_tr[:8], work / f"{arch}-qat.onnx")
        ref = fit.predict_torch(q.model, x_va[:4096])
        ort_out = ortq.predict(p, x_va[:4096])
        step = ortq.output_scale(p) or 0.0
        out["qat"] = (p, f32.seconds + q.seconds, {
            "val_mse": q.val_mse, "epochs": q.epochs, "output_step": step,
            "max_diff_vs_torch": float(np.max(np.abs(ref - ort_out))),
            "frac_within_one_step": float(np.mean(np.abs(ref - ort_out) <= step * 1.0001 + 1e-7)),
        })
    calib = x_tr[np.linspace(0, len(x_tr) - 1, min(len(x_tr), args.calib_rows)).astype(int)]
    for v in wanted:
        if v.startswith("ptq-"):
            t = time.time()
            p = ortq.quantize_ptq(out["fp32"][0], work / f"{arch}-{v}.onnx", calib, v[4:], args.weight_range)
            out[v] = (p, f32.seconds + time.time() - t, {})
        elif v == "dynamic":
            t = time.time()
            p = ortq.quantize_dyn(out["fp32"][0], work / f"{arch}-dynamic.onnx")
            out[v] = (p, f32.seconds + time.time() - t, {})
    return out


def golden_tolerance(arch: str, variant: str, path: Path) -> float:
    """0.001, except for the Transformer's INT8 variants: their float layer norms and softmax sit
    between integer kernels, so another CPU's float rounding can move a requantized value by a
    step, and the output by a few output steps; they get 4 output steps."""
    if arch != "transformer" or variant == "fp32":
        return 0.001
    return max(0.001, 4 * (ortq.output_scale(path) or 0.0))


def evaluate_variants(arch, ds, variants, window, args, dest: Path, version: str, quantd: str, hidden: int):
    te = ds.split["test"]
    fp32, fp32_pos = evaluate.evaluate_model(ds, variants["fp32"][0], window, None)
    fp32_scores = fp32["scores_test"]
    rows = []
    golden_idx = te[np.linspace(0, len(te) - 1, 8).astype(int)]
    for v, (path, seconds, extra) in variants.items():
        figures = dict(fp32) if v == "fp32" else evaluate.evaluate_model(ds, path, window, fp32_pos)[0]
        th, s_te = figures.pop("policy"), figures.pop("scores_test")
        integer, ops = (False, {}) if v == "fp32" else ortq.integer_kernel_report(path)
        ver = version if v == DEFAULT_VARIANT[arch] else f"{version}-{v}"
        metrics = {**figures, "score_mae_vs_fp32_bps": float(np.mean(np.abs(s_te - fp32_scores))),
                   "model_bytes": path.stat().st_size, "train_seconds": seconds,
                   "max_abs_weight_q": ortq.max_abs_int8(path),
                   "integer_kernels": integer, "optimized_ops": ops, **extra}
        d = write_version(
            quantd, dest, name=f"quantd-{arch}", version=ver,
            description=f"{arch.upper()} hidden {hidden} window {window} on quantd features ({ds.name}), {v}",
            onnx_path=path, variant=v, window=window, feature_dim=ds.x.shape[1], policy=th,
            train_x=ds.x[ds.split["train"]], golden_x=ds.windows(golden_idx, window),
            verify_x=verify_rows(ds.x[te]) if window == 1 else None,
            val_x=ds.x[ds.split["val"]] if window == 1 else None, weight_range=args.weight_range,
            fp32_sibling=f"{version}-fp32" if v != "fp32" else None,
            golden_tolerance=golden_tolerance(arch, v, path),
            output_meaning=f"predicted forward mid log-return over the next {ds.horizon_ns / 1e9:g} s, in bps",
            training={"script": "training/train.py", "dataset": ds.name, "symbols": sorted(map(str, set(ds.symbol))),
                      "label": f"forward mid log-return over {ds.horizon_ns / 1e9:g} s, bps",
                      "horizon_ms": ds.horizon_ns // 1_000_000, "max_rows_per_symbol": args.max_rows,
                      "split": "per symbol by exchange time: first 60% train, next 20% validation, last 20% test",
                      "rows_train": len(ds.split["train"]), "rows_val": len(ds.split["val"]), "rows_test": len(te),
                      **{f"test_{k}": v2 for k, v2 in metrics.items()
                         if isinstance(v2, (int, float)) and not isinstance(v2, bool)}})
        saturation = tomllib.loads((d / "manifest.toml").read_text()).get("saturation")
        rows.append({"arch": arch, "variant": v, "version": ver, "dir": str(d), **metrics,
                     "saturation_baseline": saturation["baseline"] if saturation else None})
    if not args.no_bench:
        for r, lat in zip(rows, evaluate.bench_models(quantd, [Path(r["dir"]) for r in rows], calls=args.bench_calls)):
            r.update(lat)
    for r in rows:
        print(f"  {arch:>4} {r['variant']:<15} ic {r['ic']:+.3f}  rank {r['rank_ic']:+.3f}  "
              f"side-agree {r['side_agreement_vs_fp32']:.3f}  pnl {r['pnl_net_bps']:+9.1f}  "
              f"int8 {'yes' if r['integer_kernels'] else 'no '}  {r.get('p50_us_b1', float('nan')):6.1f} µs/b1"
              f"  {r.get('p50_us_b64', float('nan')):7.1f} µs/b64", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantd", default="target/release/quantd")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("models"), help="models directory")
    ap.add_argument("--cache", type=Path, default=Path("training/.cache"))
    ap.add_argument("--dataset", default="ticks", choices=["ticks", "bars", "journal"],
                    help="journal: train on what a live quantd received (--journal DIR)")
    ap.add_argument("--journal", type=Path, help="a `quantd serve --journal` directory, for --dataset journal")
    ap.add_argument("--archs", default="mlp,tcn,lstm,transformer")
    ap.add_argument("--hidden", type=int, default=128, help="MLP hidden width (the sweep chose 128: see REPORT.md)")
    ap.add_argument("--seq-hidden", type=int, default=32, help="TCN channels, LSTM hidden size, Transformer width")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--horizon-ms", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--qat-epochs", type=int, default=4)
    ap.add_argument("--calib-rows", type=int, default=20_000)
    ap.add_argument("--version", default="2")
    ap.add_argument("--max-rows", type=int, default=0, help="per symbol (0: all); for smoke runs")
    ap.add_argument("--sweep", default="", help="MLP hidden sizes to sweep (e.g. 64,128,256,512)")
    ap.add_argument("--bars", action="store_true",
                    help="also compare the MLP's quantization methods on the bar files replayed as ticks")
    ap.add_argument("--bars-horizon-ms", type=int, default=60_000)
    ap.add_argument("--weight-range", default="reduced", choices=["reduced", "full"],
                    help="int8 weights in -64..64 (exact on every x86 CPU) or -127..127 (see quantizer.py)")
    ap.add_argument("--range-study", action="store_true",
                    help="also build the MLP's QAT and PTQ MinMax with full-range weights, to compare")
    ap.add_argument("--bench-calls", type=int, default=20_000)
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--report", type=Path, help="REPORT.md path (default: <out>/REPORT.md)")
    ap.add_argument("--json", type=Path, help="all figures as JSON too")
    args = ap.parse_args(argv)

    t0 = time.time()
    work = args.cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    horizon = args.horizon_ms * 1_000_000
    archs = [a for a in args.archs.split(",") if a]
    window_max = max([args.window if a != "mlp" else 1 for a in archs] + [1])
    ds = data.load(args.dataset, args.quantd, args.shared, args.cache, horizon, warmup=100, window=window_max,
                   max_rows_per_symbol=args.max_rows or None, journal=args.journal)
    print(f"{ds.name}: {len(ds.ts)} rows, symbols {sorted(map(str, set(ds.symbol)))}, "
          f"train/val/test {len(ds.split['train'])}/{len(ds.split['val'])}/{len(ds.split['test'])}", flush=True)
    rows = []
    for arch in archs:
        window = 1 if arch == "mlp" else args.window
        hidden = args.hidden if arch == "mlp" else args.seq_hidden
        variants = build_variants(arch, ds, args, hidden, window, work / arch)
        rows += [{**r, "hidden": hidden, "window": window}
                 for r in evaluate_variants(arch, ds, variants, window, args, args.out, args.version, args.quantd, hidden)]
    sweep = []
    for h in [int(s) for s in args.sweep.split(",") if s]:
        sub = argparse.Namespace(**{**vars(args), "hidden": h})
        variants = build_variants("mlp", ds, sub, h, 1, work / f"sweep-{h}", wanted=["qat", "fp32", "ptq-minmax"])
        sweep_dir = args.cache / "sweep-models"
        for r in evaluate_variants("mlp", ds, variants, 1, sub, sweep_dir, f"h{h}", args.quantd, h):
            sweep.append({**r, "hidden": h, "window": 1})
    range_study = []
    if args.range_study:
        sub = argparse.Namespace(**{**vars(args), "weight_range": "full"})
        variants = build_variants("mlp", ds, sub, args.hidden, 1, work / "range-full", wanted=["qat", "fp32", "ptq-minmax"])
        for r in evaluate_variants("mlp", ds, variants, 1, sub, args.cache / "range-models", "w8", args.quantd,
                                   args.hidden):
            avx2 = evaluate.ort_on_avx2(args.quantd, r["dir"]) if r["variant"] != "fp32" else {}
            range_study.append({**r, "hidden": args.hidden, "window": 1, **avx2})
        for r in rows:
            if r["arch"] == "mlp" and r["variant"] in ("qat", "ptq-minmax"):
                r.update(evaluate.ort_on_avx2(args.quantd, r["dir"]))
    bars_doc = None
    if args.bars:
        bds = data.load("bars", args.quantd, args.shared, args.cache, args.bars_horizon_ms * 1_000_000, warmup=100,
                        window=1, max_rows_per_symbol=args.max_rows or None)
        print(f"bars: {len(bds.ts)} rows, symbols {sorted(map(str, set(bds.symbol)))}", flush=True)
        variants = build_variants("mlp", bds, args, args.hidden, 1, work / "bars")
        rows_b = evaluate_variants("mlp", bds, variants, 1, args, args.cache / "bars-models", "b", args.quantd,
                                   args.hidden)
        bars_doc = {"horizon_ms": args.bars_horizon_ms, "symbols": sorted(map(str, set(bds.symbol))),
                    "split": {k: len(v) for k, v in bds.split.items()},
                    "rows": [{**r, "hidden": args.hidden, "window": 1} for r in rows_b]}
    doc = {"dataset": ds.name, "bars": bars_doc, "horizon_ms": args.horizon_ms, "hidden": args.hidden, "seq_hidden": args.seq_hidden, "window": args.window,
           "rows": rows, "sweep": sweep, "range_study": range_study, "weight_range": args.weight_range, "seconds": time.time() - t0,
           "split": {k: len(v) for k, v in ds.split.items()}, "symbols": sorted(map(str, set(ds.symbol)))}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    # REPORT.md next to every release model it describes (and at --report if given).
    releases = [Path(r["dir"]) / "REPORT.md" for r in rows if r["version"] == args.version]
    report.write(args.report or releases[0], doc, releases)
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
