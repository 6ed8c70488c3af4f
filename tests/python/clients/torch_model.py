"""Makes a model outside quantd's training pipeline, as a user would: a small PyTorch MLP fitted
on `quantd features` rows, exported with plain `torch.onnx.export`, then quantized with ONNX
Runtime's `quantize_static` (QDQ). Run under training/.venv (PyTorch); the import-model test
(tests/python/test_import_model.py) imports both files.

usage: torch_model.py FEATURES.npy OUT_DIR    (writes fp32.onnx and int8.onnx)
"""
import sys
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

NAMES = ["ret_bps", "ret_decay_100ms", "ret_decay_1s", "ret_decay_10s", "vol_1s", "vol_30s", "spread_bps", "imbalance",
         "microprice_bps", "trade_flow_1s", "trade_intensity_1s", "log_dt_tick_ms", "log_dt_trade_ms", "mid_zscore_30s"]


class Rows(CalibrationDataReader):
    def __init__(self, x):
        self.batches = iter([{"features": x[i:i + 64]} for i in range(0, len(x), 64)])

    def get_next(self):
        return next(self.batches, None)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    table = np.load(sys.argv[1])
    out = Path(sys.argv[2])
    x = np.stack([table[n] for n in NAMES], axis=1).astype(np.float32)
    mid = table["mid"]
    h = 50
    y = np.zeros(len(x), np.float32)
    y[:-h] = (np.log(mid[h:]) - np.log(mid[:-h])) * 1e4
    model = torch.nn.Sequential(torch.nn.Linear(14, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)[:, None]
    for _ in range(200):
        idx = torch.randint(0, len(xt), (256,))
        loss = torch.nn.functional.mse_loss(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.onnx.export(model, (xt[:4],), str(out / "fp32.onnx"), input_names=["features"], output_names=["score"],
                      dynamic_shapes={"input": {0: torch.export.Dim("batch")}}, external_data=False)
    # Reduced-range weights: exact under ONNX Runtime on every x86 CPU (no VPMADDUBSW saturation).
    quantize_static(str(out / "fp32.onnx"), str(out / "int8.onnx"), Rows(x[::7][:2048]), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)


if __name__ == "__main__":
    main()
