"""Drives quantd's Open Inference Protocol with NVIDIA's `tritonclient[grpc]`, unchanged, as a
Triton user would. Run under .venv-triton (tritonclient pins protobuf < 7); the interop test
(tests/python/test_kserve.py) reads its JSON answer.

usage: triton_client.py ADDR MODEL ROWS.npy   (ROWS: float32 [n, 14])
"""
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def call(fn):
    try:
        return {"ok": fn()}
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}


def main() -> None:
    addr, model, rows_path = sys.argv[1:4]
    rows = np.load(rows_path).astype(np.float32)
    client = grpcclient.InferenceServerClient(url=addr)
    meta = client.get_model_metadata(model, as_json=True)
    inp, out = meta["inputs"][0], meta["outputs"][0]

    def infer(x, name=inp["name"], datatype="FP32", model_name=model):
        tensor = grpcclient.InferInput(name, list(x.shape), datatype)
        tensor.set_data_from_numpy(x)
        result = client.infer(model_name, [tensor], outputs=[grpcclient.InferRequestedOutput(out["name"])])
        return result.as_numpy(out["name"]).reshape(-1).tolist()

    answer = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "metadata": meta,
        # In requests of 64 rows, as a batching client would send them, and all at once.
        "scores_batched": [s for i in range(0, len(rows), 64) for s in infer(rows[i:i + 64])],
        "scores_whole": infer(rows),
        "unknown_model": call(lambda: infer(rows[:4], model_name="no-such-model")),
        "wrong_width": call(lambda: infer(np.ascontiguousarray(rows[:4, :7]))),
        "wrong_datatype": call(lambda: infer(rows[:4].astype(np.float64), datatype="FP64")),
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
