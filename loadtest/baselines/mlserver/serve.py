#!/usr/bin/env python3
"""Starts Seldon MLServer on free loopback ports with quantd's default model behind the custom
ONNX Runtime runtime (runtime.py), and prints `listening on HOST:PORT` (the gRPC port) once it
answers ModelReady. Run under .venv-peer (scripts/peer-setup.sh).

usage: serve.py --model models/quantd-mlp/2 [--workers 0]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a quantd model version directory")
    ap.add_argument("--name", default="quantd-mlp")
    ap.add_argument("--workers", type=int, default=0,
                    help="MLServer parallel_workers (0: inference in the server process, the lowest latency)")
    args = ap.parse_args()
    # SIGTERM (the bench stopping it) ends through `finally`, which stops MLServer too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    work = Path(tempfile.mkdtemp(prefix="quantd-mlserver-"))
    shutil.copy(HERE / "runtime.py", work / "runtime.py")
    shutil.copy(Path(args.model) / "model.onnx", work / "model.onnx")
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    (work / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port,
        "parallel_workers": args.workers, "debug": False, "load_models_at_startup": True}))
    (work / "model-settings.json").write_text(json.dumps({
        "name": args.name, "implementation": "runtime.OnnxRuntimeModel",
        "parameters": {"uri": str(work / "model.onnx")}}))
    mlserver = Path(sys.executable).parent / "mlserver"
    proc = subprocess.Popen([str(mlserver), "start", str(work)], cwd=work, env={**os.environ, "PYTHONPATH": str(work)})
    try:
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb, dataplane_pb2_grpc as rpc
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                    ready = rpc.GRPCInferenceServiceStub(ch).ModelReady(pb.ModelReadyRequest(name=args.name), timeout=1)
                    if ready.ready:
                        print(f"listening on 127.0.0.1:{grpc_port}", flush=True)
                        break
            except grpc.RpcError:
                time.sleep(0.2)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
