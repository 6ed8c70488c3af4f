"""REPORT.md: the seed article's comparison table (accuracy loss, training cost, hardware fit,
recommended use) with the numbers this pipeline measured in place of its claims, every model's
figures, and the size sweep. Every sentence with a number is computed from the run."""
from __future__ import annotations

from pathlib import Path

NAMES = {"fp32": "FP32", "qat": "QAT INT8 (QDQ)", "ptq-minmax": "PTQ static, MinMax",
         "ptq-percentile": "PTQ static, Percentile", "ptq-entropy": "PTQ static, Entropy",
         "dynamic": "Dynamic INT8"}


def _f(v, fmt):
    return "—" if v is None or v != v else format(v, fmt)


def _int8_ops(r) -> str:
    ops = r.get("optimized_ops") or {}
    keep = [f"{op}×{n}" for op, n in ops.items() if op.startswith(("Q", "Dynamic", "MatMulInteger", "ConvInteger"))
            and op not in ("QuantizeLinear",)]
    return ", ".join(keep) if keep else "—"


def table(rows) -> list[str]:
    out = ["| model | method | IC | rank IC | dir. acc. | side = FP32 | PnL net (gross), bps | changes | size | "
           "served on | µs/call b1 | µs/call b64 | integer kernels (ONNX Runtime's optimised graph) | train s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['arch'].upper()} h{r.get('hidden', '')} `{r['version']}` | {NAMES[r['variant']]} | {_f(r['ic'], '+.3f')} | "
            f"{_f(r['rank_ic'], '+.3f')} | {_f(r['directional_accuracy'], '.3f')} | "
            f"{_f(r['side_agreement_vs_fp32'], '.3f')} | {_f(r['pnl_net_bps'], '+.0f')} ({_f(r['pnl_gross_bps'], '+.0f')}) | "
            f"{r['position_changes']} | {r['model_bytes'] / 1024:.1f} KiB | {_served(r)} | "
            f"{_f(r.get('p50_us_b1'), '.2f')} | {_f(r.get('p50_us_b64'), '.1f')} | {_int8_ops(r) if r['variant'] != 'fp32' else 'n/a (float)'} | "
            f"{r['train_seconds']:.0f} |")
    return out


def _served(r) -> str:
    """The backend `auto` picked for the timing (`native/avx512vnni`, `ort`)."""
    if "backend" not in r:
        return "—"
    return f"{r['backend']}/{r['isa']}" if r["backend"] == "native" else r["backend"]


def _loss(r, fp32) -> float:
    """Relative IC loss against FP32, in % (negative: the INT8 model scored a higher IC)."""
    return 100.0 * (fp32["ic"] - r["ic"]) / abs(fp32["ic"]) if fp32["ic"] else float("nan")


def seed_table(rows) -> list[str]:
    by = {(r["arch"], r["variant"]): r for r in rows}
    archs = [a for a in ("mlp", "tcn", "lstm", "transformer") if (a, "fp32") in by]
    cols = [("QAT", lambda a: [by.get((a, "qat"))]),
            ("PTQ static (MinMax / Percentile / Entropy)",
             lambda a: [by.get((a, v)) for v in ("ptq-minmax", "ptq-percentile", "ptq-entropy")]),
            ("dynamic quantization", lambda a: [by.get((a, "dynamic"))])]

    def cell(a, pick, fn):
        rs = [r for r in pick(a) if r]
        return " / ".join(fn(r, by[(a, "fp32")]) for r in rs) if rs else "not built"

    def per_arch(pick, fn):
        return "<br>".join(f"{a.upper()}: {cell(a, pick, fn)}" for a in archs)

    lines = ["| | " + " | ".join(c for c, _ in cols) + " |", "|---|---|---|---|"]
    rowspec = [
        ("IC loss vs FP32 (article: QAT <2%, PTQ 5–10%, dynamic high)", lambda r, f: f"{_loss(r, f):+.1f}%"),
        ("side agreement with FP32", lambda r, f: f"{r['side_agreement_vs_fp32']:.3f}"),
        ("PnL net vs FP32, bps", lambda r, f: f"{r['pnl_net_bps'] - f['pnl_net_bps']:+.0f}"),
        ("training cost, s (one thread; article: QAT high, PTQ low)", lambda r, f: f"{r['train_seconds']:.0f} (FP32 {f['train_seconds']:.0f})"),
        ("size vs FP32 (article: 4× smaller)", lambda r, f: f"{f['model_bytes'] / r['model_bytes']:.2f}× smaller"),
        ("speed vs FP32, batch 1 (article: 2–3× faster)", lambda r, f: f"{f.get('p50_us_b1', 0) / r.get('p50_us_b1', 1):.2f}×"),
        ("speed vs FP32, batch 64", lambda r, f: f"{f.get('p50_us_b64', 0) / r.get('p50_us_b64', 1):.2f}×"),
        ("served on (the fastest exact backend here)", lambda r, f: _served(r)),
        ("hardware fit: what ONNX Runtime (CPU) runs", lambda r, f: _int8_ops(r)),
    ]
    for title, fn in rowspec:
        lines.append(f"| {title} | " + " | ".join(per_arch(pick, fn) for _, pick in cols) + " |")
    return lines


def findings(rows, sweep) -> list[str]:
    by = {(r["arch"], r["variant"]): r for r in rows}
    out = []
    for a in ("mlp", "tcn"):
        if (a, "qat") not in by:
            continue
        f, q = by[(a, "fp32")], by[(a, "qat")]
        ptq = [by[(a, v)] for v in ("ptq-minmax", "ptq-percentile", "ptq-entropy") if (a, v) in by]
        ptq_losses = [_loss(r, f) for r in ptq]
        ptq_ics = ", ".join(format(r["ic"], "+.3f") for r in ptq)
        ptq_loss_text = ", ".join(format(x, "+.1f") + "%" for x in ptq_losses)
        out.append(
            f"- {a.upper()}: QAT IC {q['ic']:+.3f} against FP32 {f['ic']:+.3f} ({_loss(q, f):+.1f}%); PTQ "
            f"{ptq_ics} ({ptq_loss_text}). "
            + ("QAT lost less IC than every PTQ calibration." if all(_loss(q, f) < x for x in ptq_losses)
               else "QAT did not lose less IC than every PTQ calibration: the article's '30–50% less loss than PTQ' "
                    "does not hold here."))
        out.append(
            f"- {a.upper()} speed: INT8 QAT ({_served(q)}) {q.get('p50_us_b1', float('nan')):.2f} µs vs FP32 "
            f"({_served(f)}) {f.get('p50_us_b1', float('nan')):.2f} µs at batch 1, {q.get('p50_us_b64', float('nan')):.1f} vs "
            f"{f.get('p50_us_b64', float('nan')):.1f} µs at batch 64.")
    if ("lstm", "dynamic") in by:
        f, d = by[("lstm", "fp32")], by[("lstm", "dynamic")]
        out.append(f"- LSTM: dynamic INT8 (DynamicQuantizeLSTM) IC {d['ic']:+.3f} vs FP32 {f['ic']:+.3f}, "
                   f"{d.get('p50_us_b1', float('nan')):.1f} vs {f.get('p50_us_b1', float('nan')):.1f} µs at batch 1.")
    if sweep:
        out.append(f"- Size sweep: QAT INT8 is faster than FP32 at batch 1 for hidden sizes "
                   f"{_pays(sweep, 1) or 'none'}, at batch 64 for {_pays(sweep, 64) or 'none'}.")
    out.append("- Dynamic quantization computes activation ranges per call, so a tick's score depends on the other "
               "ticks of its batch: its golden rows are checked one row per call, and the engine's batch-1 vs "
               "batch-64 replay determinism holds for the static (QAT/PTQ) models only.")
    return out


def _pays(sweep, batch: int) -> list[int]:
    """Hidden sizes where the QAT model's median call beat its FP32 twin's at `batch`."""
    fp32 = {s["hidden"]: s.get(f"p50_us_b{batch}") for s in sweep if s["variant"] == "fp32"}
    return [s["hidden"] for s in sweep if s["variant"] == "qat" and s.get(f"p50_us_b{batch}", 1e9) < fp32.get(s["hidden"], 0)]


def _ratio(f, q, batch: int) -> float:
    return f.get(f"p50_us_b{batch}", float("nan")) / q.get(f"p50_us_b{batch}", float("nan"))


def default_section(rows) -> list[str]:
    by = {(r["arch"], r["variant"]): r for r in rows}
    if ("mlp", "qat") not in by:
        return []
    q, f = by[("mlp", "qat")], by[("mlp", "fp32")]
    speed = []
    for b in (1, 64):
        x = _ratio(f, q, b)
        speed.append(f"{q.get(f'p50_us_b{b}', float('nan')):.2f} µs vs {f.get(f'p50_us_b{b}', float('nan')):.2f} µs "
                     f"per call at batch {b} ({x:.2f}× {'faster' if x >= 1 else 'slower: INT8 does not pay here'})")
    return [
        "## The default model",
        "",
        f"`quantd-mlp@{q['version']}` (`models/DEFAULT` names quantd-mlp; a server picks its highest plain-number "
        f"version): the MLP 14-{q['hidden']}-{q['hidden']}-1 after quantization-aware training (IC {q['ic']:+.3f} "
        f"against its FP32 twin's {f['ic']:+.3f}), the width chosen from the size sweep below (quality falls with "
        "size: h256 and h512 overfit the 5.7 minutes of recorded ticks). On this CPU it is served by "
        f"{_served(q)} against the FP32 twin on {_served(f)}: {'; '.join(speed)}.",
        "",
    ]


def range_section(study, rows) -> list[str]:
    """Reduced-range (-64..64) against full-range (-127..127) int8 weights, same data and seeds."""
    if not study:
        return []
    reduced = [r for r in rows if r["arch"] == "mlp" and r["variant"] in ("qat", "ptq-minmax")]
    full = [r for r in study if r["variant"] in ("qat", "ptq-minmax")]
    out = ["## Portable INT8: reduced-range weights", "",
           "Without VNNI (AVX2-only x86, e.g. AMD EPYC before Zen 4), ONNX Runtime's u8×s8 kernels multiply with "
           "VPMADDUBSW, whose int16 sum of two u8×s8 products saturates above 32767: with full-range weights "
           "(|w| ≤ 127) a model's served scores then differ from its own integer semantics, and differ from one "
           "CPU to the next. With |w| ≤ 64 the pair sum is at most 2·255·64 = 32640, so every CPU computes the "
           "exact result. quantd's training therefore emits reduced-range weights (`--weight-range reduced`, the "
           "default); the same MLP quantized with full-range weights, same data and seeds:", "",
           "| model | weights | max \|w_q\| | IC | rank IC | side = FP32 | PnL net, bps | ONNX Runtime on AVX2-only: "
           "rows off the reference (worst, output steps) | served on | µs/call b1 | µs/call b64 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in [*reduced, *full]:
        avx2 = (f"{r['ort_avx2_rows_off']} ({r['ort_avx2_max_steps']})" if "ort_avx2_rows_off" in r
                else "not measured (no qemu-user)")
        out.append(f"| MLP h{r['hidden']} `{r['version']}` | {NAMES[r['variant']]}, "
                   f"{'full' if r in full else 'reduced'} | {r['max_abs_weight_q']} | {_f(r['ic'], '+.3f')} | "
                   f"{_f(r['rank_ic'], '+.3f')} | {_f(r['side_agreement_vs_fp32'], '.3f')} | {_f(r['pnl_net_bps'], '+.0f')} | "
                   f"{avx2} | {_served(r)} | {_f(r.get('p50_us_b1'), '.2f')} | {_f(r.get('p50_us_b64'), '.1f')} |")
    out += ["", "The AVX2-only column is `quantd verify-model --backend ort` under qemu-user's EPYC-Rome CPU model "
            "(`qemu-x86_64 -cpu EPYC-Rome`: AVX2, no AVX-512, no VNNI), which compares ONNX Runtime with the "
            "reference semantics on the model's verification set. quantd's native kernel is exact with either range "
            "on every CPU; reduced range is what makes the ONNX Runtime path, and any other consumer of the ONNX "
            "file, exact too.", ""]
    return out


def saturation_section(rows) -> list[str]:
    """The validation period's clamped share per stage (the manifests' `[saturation]` baselines)."""
    rows = [r for r in rows if r.get("saturation_baseline")]
    if not rows:
        return []
    stages = sorted({s for r in rows for s in r["saturation_baseline"]}, key=lambda s: (s != "input", s))
    out = ["## Saturation on the validation period (the quantization-collapse baseline)", "",
           "The share of values quantd's native kernel clamps at an integer limit, per stage, over the validation "
           "period: `input` is the feature row's quantization, `layerN` each dense layer's requantized output (a "
           "Relu's zero is not saturation). Each model's manifest records it in `[saturation]`; the server exports "
           "it as `quantd_quant_saturation_baseline` beside the live `quantd_quant_saturation_ratio`, and the alert "
           "`QuantdQuantizationCollapse` fires when the live share exceeds 5× the baseline plus 0.5 percentage "
           "points. The last layer is the score itself: its share is how often the score sits at the edge of the "
           "range its output quantization covers.", "",
           "| model | method | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
    for r in rows:
        b = r["saturation_baseline"]
        out.append(f"| {r['arch'].upper()} h{r.get('hidden', '')} `{r['version']}` | {NAMES[r['variant']]} | "
                   + " | ".join(f"{100 * b[s]:.3f}%" if s in b else "—" for s in stages) + " |")
    return out + [""]


# `make study` (training/study.py) writes its section into the default model's REPORT.md between
# these markers; `make train` rewrites the rest and keeps that section.
STUDY_BEGIN, STUDY_END = "<!-- make study: begin -->", "<!-- make study: end -->"


def kept_study(path: Path) -> str:
    """The study section of an existing report ("" if none)."""
    old = path.read_text() if path.exists() else ""
    if STUDY_BEGIN in old and STUDY_END in old:
        return "\n" + old[old.index(STUDY_BEGIN):old.index(STUDY_END) + len(STUDY_END)] + "\n"
    return ""


def write(path: Path, doc: dict, extra_paths: list[Path] = ()) -> None:
    rows = doc["rows"]
    lines = [
        "# Model report (generated by `make train`; do not edit by hand)",
        "",
        f"Data: `{doc['dataset']}` ({', '.join(doc['symbols'])}), features from `quantd features`; label: the "
        f"forward mid log-return over {doc['horizon_ms']} ms in bps; split per symbol by time 60/20/20, rows "
        f"train {doc['split']['train']}, validation {doc['split']['val']}, test {doc['split']['test']}. Every figure "
        "is on the held-out test period. IC: Pearson correlation of score and realised return; rank IC: Spearman; "
        "directional accuracy over non-zero labels; side = FP32: fraction of test ticks where the policy's side "
        "(long/flat/short) equals the FP32 model's; PnL: quantd's policy (thresholds from the validation period) "
        "paying half the quoted spread on every change, in bps of one unit of notional, summed over symbols. "
        "Latency: `quantd bench-model`, the scorer the engine runs (the fastest backend that is exact on this CPU, "
        "as `backend = auto` picks it: quantd's native INT8 kernel or an ONNX Runtime session, one thread), median "
        "per call, all variants of an architecture timed side by side in interleaved rounds. Training time on one "
        f"CPU thread; int8 weights in the {doc.get('weight_range', 'reduced')} range. "
        f"Pipeline: {doc['seconds']:.0f} s.",
        "",
        "## The seed article's table, measured",
        "",
        *seed_table(rows),
        "",
        "IC loss is relative to the FP32 model of the same architecture and data; a negative loss means the INT8 "
        "model scored the higher IC. \"not built\": the method does not apply (no static toolkit quantizes the LSTM; "
        "QAT and PTQ would only quantize its output layer).",
        "",
        *default_section(rows),
        *range_section(doc.get("range_study"), rows),
        *saturation_section(rows),
        "## Findings",
        "",
        *findings(rows, doc["sweep"]),
        "",
        "## Every model",
        "",
        *table(rows),
        "",
    ]
    if doc["sweep"]:
        lines += ["## Size sweep (MLP 14-h-h-1): where INT8 pays", "", *table(doc["sweep"]), ""]
    if doc.get("bars"):
        b = doc["bars"]
        lines += ["## Longer history: the bar files replayed as ticks (MLP)", "",
                  f"The intraday bar files ({', '.join(b['symbols'])}) replayed as ticks by `training/quantd_train/bars.py`"
                  f" (four price points per bar), features from `quantd features`, label over {b['horizon_ms'] / 1000:g} s; "
                  f"rows train {b['split']['train']}, validation {b['split']['val']}, test {b['split']['test']}. "
                  "These models are not served (their label horizon differs); they compare the quantization methods on "
                  "a month of data per instrument. Their PnL is an artefact, not a result: the path rule orders a bar's "
                  "high and low by the bar's own close, so the moves inside a bar are predictable from its first "
                  "points. Read the IC and agreement columns across methods, not the money.",
                  "", *seed_table(b["rows"]), "", *table(b["rows"]), ""]
    text = "\n".join(lines) + "\n"
    for p in [path, *extra_paths]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + kept_study(p))
