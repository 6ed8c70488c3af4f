#!/usr/bin/env python3
"""Adds the verification set (`verify.npy` + `[verify]`) to committed model versions made before
training wrote one: 2048 rows of the same test period `train.py` uses, from `quantd features` on
the recorded ticks. Only versions of one feature row (the native kernel's graphs) get one.

    python training/add_verify_sets.py --quantd target/release/quantd --models models
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantd_train import data  # noqa: E402
from quantd_train.artifacts import verify_rows, write_verify_set  # noqa: E402


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
        if "verify" in m or m["features"].get("window", 1) != 1:
            continue
        lines = write_verify_set(manifest.parent, x)
        manifest.write_text(manifest.read_text().rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
        print(f"{manifest.parent}: verify.npy ({len(x)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
