#!/usr/bin/env python3
"""Re-computes a committed model's test-period figures from its ONNX file (and its FP32 sibling's,
for side agreement), without training: the check that a model's manifest and REPORT.md numbers
are reproducible. `reevaluate.py models/quantd-mlp/2` prints them."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantd_train import data, evaluate  # noqa: E402


def reevaluate(model_dir: Path, quantd: str, shared: Path, cache: Path) -> dict:
    manifest = tomllib.loads((model_dir / "manifest.toml").read_text())
    t = manifest["training"]
    window = manifest["features"].get("window", 1)
    ds = data.load(t["dataset"], quantd, shared, cache, int(t["horizon_ms"]) * 1_000_000, warmup=100,
                   window=window, symbols=t["symbols"], max_rows_per_symbol=t.get("max_rows_per_symbol") or None)
    sibling = model_dir.parent / manifest.get("fp32_sibling", model_dir.name)
    _, fp32_pos = evaluate.evaluate_model(ds, sibling / "model.onnx", window, None)
    figures, _ = evaluate.evaluate_model(ds, model_dir / "model.onnx", window, fp32_pos)
    figures.pop("scores_test")
    figures.pop("policy")
    sha = hashlib.sha256((model_dir / manifest["model_file"]).read_bytes()).hexdigest()
    return {**figures, "sha256_ok": sha == manifest["sha256"], "manifest_figures": t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--quantd", default="target/release/quantd")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--cache", type=Path, default=Path("training/.cache"))
    args = ap.parse_args()
    got = reevaluate(args.model_dir, args.quantd, args.shared, args.cache)
    got.pop("manifest_figures")
    print(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
