#!/usr/bin/env python3
"""The peer a quant would write first: Python grpcio + onnxruntime serving quantd's contract.

Same proto, same default model, the same 14 features computed per tick in Python/numpy, the same
policy — written as well as that stack allows: one InferenceSession (1 intra-op thread, all graph
optimisations), IOBinding with a preallocated input and output, a thread-pool grpcio server.
Used by the benchmark suite as the comparison point; not part of quantd.

Usage: python_server.py --listen 127.0.0.1:50071 --model ../../models/quantd-mlp/1
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import tomllib
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

TAU_100MS, TAU_1S, TAU_10S, TAU_30S = 0.1, 1.0, 10.0, 30.0
DT_CAP_MS, Z_CLAMP, Z_VAR_FLOOR = 3_600_000.0, 10.0, 1e-6


class Features:
    """quantd's features (src/features/mod.rs), one symbol, per tick."""

    def __init__(self):
        self.ticks = 0
        self.last_ts = None
        self.last_trade_ts = None
        self.mid = 0.0
        self.has_quote = False
        self.bid_px = self.bid_qty = self.ask_px = self.ask_qty = 0.0
        self.r100 = self.r1 = self.r10 = self.v1 = self.v30 = 0.0
        self.flow_s = self.flow_t = self.count = 0.0
        self.z_mean = self.z_var = 0.0

    def update(self, kind: str, ts: int, bid_px=0.0, bid_qty=0.0, ask_px=0.0, ask_qty=0.0,
               trade_px=0.0, trade_qty=0.0, side=0.0) -> np.ndarray:
        first = self.ticks == 0
        dt_ns = 0 if first else max(ts - self.last_ts, 0)
        dt_s = dt_ns * 1e-9
        d100, d1, d10, d30 = (math.exp(-dt_s / t) for t in (TAU_100MS, TAU_1S, TAU_10S, TAU_30S))
        prev_mid = self.mid
        if kind == "quote":
            self.has_quote = True
            self.bid_px, self.bid_qty, self.ask_px, self.ask_qty = bid_px, bid_qty, ask_px, ask_qty
            self.mid = 0.5 * (bid_px + ask_px)
        elif not self.has_quote:
            self.mid = trade_px
        ret = 0.0 if first or prev_mid <= 0.0 else math.log(self.mid / prev_mid) * 1e4
        self.r100 = self.r100 * d100 + ret
        self.r1 = self.r1 * d1 + ret
        self.r10 = self.r10 * d10 + ret
        self.v1 = self.v1 * d1 + ret * ret
        self.v30 = self.v30 * d30 + ret * ret
        dt_trade = DT_CAP_MS if self.last_trade_ts is None else min(max((ts - self.last_trade_ts) * 1e-6, 0.0), DT_CAP_MS)
        self.flow_s *= d1
        self.flow_t *= d1
        self.count *= d1
        if kind == "trade":
            self.flow_s += side * trade_qty
            self.flow_t += trade_qty
            self.count += 1.0
            self.last_trade_ts = ts
        if first:
            self.z_mean, self.z_var = self.mid, 0.0
        else:
            a = 1.0 - d30
            dev = (self.mid - self.z_mean) / self.z_mean * 1e4
            self.z_mean += a * (self.mid - self.z_mean)
            self.z_var = (1.0 - a) * (self.z_var + a * dev * dev)
        zdev = (self.mid - self.z_mean) / self.z_mean * 1e4
        z = max(-Z_CLAMP, min(Z_CLAMP, zdev / math.sqrt(self.z_var))) if self.z_var > Z_VAR_FLOOR else 0.0
        if self.has_quote:
            depth = self.bid_qty + self.ask_qty
            micro = (self.bid_px * self.ask_qty + self.ask_px * self.bid_qty) / depth
            spread = (self.ask_px - self.bid_px) / self.mid * 1e4
            imb = (self.bid_qty - self.ask_qty) / depth
            micro_bps = (micro - self.mid) / self.mid * 1e4
        else:
            spread = imb = micro_bps = 0.0
        flow = self.flow_s / self.flow_t if self.flow_t > 0.0 else 0.0
        dt_tick = DT_CAP_MS if first else min(dt_ns * 1e-6, DT_CAP_MS)
        out = np.array([ret, self.r100, self.r1, self.r10, math.sqrt(self.v1), math.sqrt(self.v30), spread, imb,
                        micro_bps, flow, math.log(1.0 + self.count / TAU_1S), math.log1p(dt_tick),
                        math.log1p(dt_trade), z], dtype=np.float32)
        self.ticks += 1
        self.last_ts = ts
        return out


def make_servicer(pb2, pb2_grpc, model_dir: Path):
    manifest = tomllib.loads((model_dir / "manifest.toml").read_text())
    policy = manifest["policy"]
    label = f'{manifest["name"]}@{manifest["version"]}'
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_dir / manifest["model_file"]), so, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 14), dtype=np.float32)
    y = np.zeros((1, 1), dtype=np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input(manifest["io"]["input"], x)
    binding.bind_output(manifest["io"]["output"], "cpu", 0, np.float32, [1, 1], y.ctypes.data)

    class Signals(pb2_grpc.SignalServiceServicer):
        def __init__(self):
            self.symbols: dict[str, Features] = {}
            self.positions: dict[str, float] = {}

        def signal(self, t):
            recv = time.time_ns()
            sig = pb2.Signal(symbol=t.symbol, seq=t.seq, exchange_ts_ns=t.exchange_ts_ns, model=label, server_recv_ns=recv)
            quote = t.kind == pb2.TICK_KIND_QUOTE
            vals = (t.bid_px, t.bid_qty, t.ask_px, t.ask_qty) if quote else (t.trade_px, t.trade_qty)
            if not t.symbol or len(t.symbol.encode()) > 32:
                sig.reject_reason = "empty_symbol: symbol is empty" if not t.symbol else "symbol_too_long: symbol is longer than 32 bytes"
            elif not all(math.isfinite(v) for v in vals):
                sig.reject_reason = "non_finite: a price or size is NaN or infinite"
            elif any(v <= 0 for v in vals):
                sig.reject_reason = "non_positive: a price or size is zero or negative"
            elif quote and t.bid_px > t.ask_px:
                sig.reject_reason = "crossed_book: bid_px is above ask_px"
            else:
                f = self.symbols.setdefault(t.symbol, Features())
                if f.last_ts is not None and t.exchange_ts_ns < f.last_ts:
                    sig.reject_reason = "stale_timestamp: exchange_ts_ns is older than this symbol's last accepted tick"
                else:
                    side = {pb2.AGGRESSOR_BUY: 1.0, pb2.AGGRESSOR_SELL: -1.0}.get(t.aggressor, 0.0)
                    x[0, :] = f.update("quote" if quote else "trade", t.exchange_ts_ns, t.bid_px, t.bid_qty, t.ask_px,
                                       t.ask_qty, t.trade_px, t.trade_qty, side)
                    session.run_with_iobinding(binding)
                    score = float(y[0, 0])
                    sig.score = score
                    if f.ticks < policy["warmup_ticks"]:
                        sig.warming_up = True
                    else:
                        pos = self.positions.get(t.symbol, 0.0)
                        size = max(-1.0, min(1.0, score / policy["full_position_bps"]))
                        agrees = pos != 0.0 and math.copysign(1.0, score) == math.copysign(1.0, pos)
                        hold = agrees and abs(score) >= policy["exit_bps"]
                        pos = size if math.isfinite(score) and (hold or abs(score) >= policy["entry_bps"]) else 0.0
                        self.positions[t.symbol] = pos
                        sig.target_position = pos
            sig.server_send_ns = time.time_ns()
            return sig

        def StreamTicks(self, request_iterator, context):
            for t in request_iterator:
                yield self.signal(t)

        def Predict(self, request, context):
            return self.signal(request)

        # Batches: one SignalBatch per TickBatch, one Signal per Tick (the model still runs per
        # tick, as this peer's single-row binding does; no batch-size limit).
        def StreamTickBatches(self, request_iterator, context):
            for b in request_iterator:
                yield pb2.SignalBatch(signals=[self.signal(t) for t in b.ticks])

        def PredictBatch(self, request, context):
            return pb2.SignalBatch(signals=[self.signal(t) for t in request.ticks])

    return Signals()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:50071")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--stubs", type=Path, required=True, help="directory with quantd/v1/quantd_pb2*.py")
    args = ap.parse_args()
    sys.path.insert(0, str(args.stubs))
    from quantd.v1 import quantd_pb2, quantd_pb2_grpc

    # One worker thread: the feature state and the IOBinding buffers are not shared across threads.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    quantd_pb2_grpc.add_SignalServiceServicer_to_server(make_servicer(quantd_pb2, quantd_pb2_grpc, args.model), server)
    port = server.add_insecure_port(args.listen)
    server.start()
    print(f"python peer listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
