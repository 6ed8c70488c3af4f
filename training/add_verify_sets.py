#!/usr/bin/env python3
"""Adds what training now writes beside a model to committed versions made without it (by
`make_default_model.py`, or before training wrote them): the verification set (`verify.npy` +
`[verify]`: 2048 rows of the test period `train.py` uses, from `quantd features` on the recorded
ticks) and the saturation baseline (`[saturation]`: the native kernel on the validation period).
Only versions of one feature row (the native kernel's graphs) get them.

    python training/add_verify_sets.py --quantd target/release/quantd --models models
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantd_train import data  # noqa: E402
from quantd_train.artifacts import append_section, saturation_section, verify_rows, write_verify_set  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantd", default="target/release/quantd")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--cache", type=Path, default=Path("training/.cache"))
    args = ap.parse_args(argv)
    ds = data.load("ticks", args.quantd, args.shared, args.cache, 1_000_000_000, warmup=100, window=16)
    x = verify_rows(ds.x[ds.split["test"]])
    for manifest in sorted(args.models.glob("*/*/manifest.toml")):
        m = tomllib.loads(manifest.read_text())
        if m["features"].get("window", 1) != 1:
            continue
        if "verify" not in m:
            append_section(manifest, write_verify_set(manifest.parent, x))
            print(f"{manifest.parent}: verify.npy ({len(x)} rows)")
        if "saturation" not in m and m["quantization"]["method"] != "fp32":
            lines = saturation_section(args.quantd, manifest.parent, ds.x[ds.split["val"]])
            append_section(manifest, lines)
            print(f"{manifest.parent}: saturation baseline" if lines else f"{manifest.parent}: not on the native kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
