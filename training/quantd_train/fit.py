"""Fitting: FP32 training with early stopping on the validation period, then quantization-aware
fine-tuning (PT2E fake quantization with `OrtQuantizer`), and ONNX export of both with the dynamo
exporter (opset 18). Runs on one CPU thread (`torch.set_num_threads(1)`): on two cores, two
threads made training 20-90x slower here.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .models import build
from .quantizer import OrtQuantizer

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
torch.set_num_threads(1)

# Batch dimension of every exported model: dynamic, with room above any evaluation batch.
BATCH = torch.export.Dim("batch", min=1, max=1 << 20)


@dataclass
class Fitted:
    model: torch.nn.Module
    val_mse: float
    epochs: int
    seconds: float


def _batches(n: int, size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for s in range(0, n, size):
        yield order[s:s + size]


def _module_mode(model, train: bool):
    model.train(train)


def _train(model, xs, ys, xv, yv, epochs, lr, seed, desc, mode=_module_mode, progress=True):
    """Adam on MSE with early stopping on validation; `mode(model, train)` switches the model
    between training and evaluation (exported PT2E modules need their own switch)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    xt, yt = torch.from_numpy(xs), torch.from_numpy(ys.astype(np.float32))[:, None]
    xvt, yvt = torch.from_numpy(xv), torch.from_numpy(yv.astype(np.float32))[:, None]
    best = (float("inf"), None, 0)
    bar = tqdm(range(epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        mode(model, True)
        for bi in _batches(len(xt), 512, rng):
            loss = torch.nn.functional.mse_loss(model(xt[bi]), yt[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
        mode(model, False)
        with torch.no_grad():
            val = float(torch.nn.functional.mse_loss(model(xvt), yvt))
        bar.set_postfix(val_mse=f"{val:.4f}")
        if val < best[0]:
            best = (val, copy.deepcopy(model.state_dict()), epoch + 1)
    model.load_state_dict(best[1])
    return best[0], best[2]


@dataclass
class Blocks:
    """A split as blocks of consecutive ticks of one symbol, for the utility objective: the model
    inputs, each tick's next-tick return and half spread (bps), and [start, end) of each block."""
    x: np.ndarray
    ret: np.ndarray
    half_spread: np.ndarray
    bounds: list[tuple[int, int]]


def _utility_train(model, tr: Blocks, va: Blocks, epochs, lr, seed, temperature, form, desc, mode=_module_mode,
                   progress=True, blocks_per_step=8):
    """Adam on minus the utility (objective.utility_loss) of blocks of consecutive ticks, with early
    stopping on the validation blocks' mean utility."""
    from .objective import utility_loss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t = {k: (torch.from_numpy(b.x), torch.from_numpy(b.ret.astype(np.float32)),
             torch.from_numpy(b.half_spread.astype(np.float32))) for k, b in (("tr", tr), ("va", va))}

    def loss_of(split, bounds):
        x, r, h = t[split]
        return torch.stack([utility_loss(model(x[a:b])[:, 0], r[a:b], h[a:b], temperature, form) for a, b in bounds]).mean()

    best = (float("inf"), copy.deepcopy(model.state_dict()), 0)
    bar = tqdm(range(epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        mode(model, True)
        order = rng.permutation(len(tr.bounds))
        for s in range(0, len(order), blocks_per_step):
            loss = loss_of("tr", [tr.bounds[i] for i in order[s:s + blocks_per_step]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        mode(model, False)
        with torch.no_grad():
            val = float(loss_of("va", va.bounds))
        bar.set_postfix(val_loss=f"{val:.4f}")
        if val < best[0]:
            best = (val, copy.deepcopy(model.state_dict()), epoch + 1)
    model.load_state_dict(best[1])
    return best[0], best[2]


def fit_utility(fp32: torch.nn.Module, tr: Blocks, va: Blocks, epochs, temperature, form="mean_variance", seed=7,
                progress=True) -> Fitted:
    """Fine-tunes a copy of an FP32 model on the utility objective instead of the MSE."""
    t = time.time()
    model = copy.deepcopy(fp32)
    val, ep = _utility_train(model, tr, va, epochs, 1e-4, seed, temperature, form, f"utility {form}", progress=progress)
    model.eval()
    return Fitted(model, val, ep, time.time() - t)


# Adam's learning rate per architecture (1e-3 otherwise). The Transformer at 1e-3 overfits the
# training minutes from the second epoch and keeps no signal (test IC -0.01); at 1e-4 its first
# epoch reaches validation MSE 3.58 against 4.26, and test IC 0.20 (measured 2026-12-07).
LEARNING_RATE = {"transformer": 1e-4}


def fit_fp32(arch, x, y, xv, yv, hidden, window, mean, scale, epochs, seed=7, progress=True) -> Fitted:
    t = time.time()
    torch.manual_seed(seed)
    model = build(arch, x.shape[-1], hidden, window, mean, scale)
    lr = LEARNING_RATE.get(arch, 1e-3)
    val, ep = _train(model, x, y, xv, yv, epochs, lr, seed, f"{arch} fp32", progress=progress)
    model.eval()
    return Fitted(model, val, ep, time.time() - t)


def export_program(model, example):
    return torch.export.export(model, (example,), dynamic_shapes=({0: BATCH},))


def fit_qat(fp32: torch.nn.Module, x, y, xv, yv, epochs, seed=7, progress=True, weight_range="reduced",
            utility=None) -> Fitted:
    """Fine-tunes a copy of the FP32 model with fake quantization (weights in `weight_range`, see
    `quantizer.WEIGHT_QMAX`); returns the converted (reference-quantized) graph module, whose
    numerics the ONNX export reproduces. `utility` = (train Blocks, val Blocks, temperature, form)
    fine-tunes on the utility objective instead of the MSE: quantization-aware training joint with
    the trading goal."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    t = time.time()
    gm = export_program(copy.deepcopy(fp32), torch.from_numpy(x[:8])).module()
    prepared = prepare_qat_pt2e(gm, OrtQuantizer(qat=True, weight_range=weight_range))

    def mode(m, train):
        (move_exported_model_to_train if train else move_exported_model_to_eval)(m)

    # Observers see a pass over the training data before the weights move.
    mode(prepared, True)
    with torch.no_grad():
        for s in range(0, min(len(x), 50_000), 2048):
            prepared(torch.from_numpy(x[s:s + 2048]))
    if utility is None:
        val, ep = _train(prepared, x, y, xv, yv, epochs, 1e-4, seed, "qat", mode=mode, progress=progress)
    else:
        tr, va, temperature, form = utility
        val, ep = _utility_train(prepared, tr, va, epochs, 1e-4, seed, temperature, form, "qat utility", mode=mode,
                                 progress=progress)
    mode(prepared, False)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    return Fitted(converted, val, ep, time.time() - t)


def export_onnx(model, example: np.ndarray, path: Path) -> Path:
    """ONNX with input `features` and output `score`, dynamic batch, opset 18 (dynamo exporter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prog = torch.onnx.export(model, (torch.from_numpy(example),), dynamic_shapes=({0: BATCH},), dynamo=True,
                             opset_version=18, input_names=["features"], output_names=["score"], verbose=False)
    prog.save(str(path))
    # The exporter annotates every node with PyTorch metadata (scopes, stack traces): useful for
    # debugging, half the file of a small model. The served artifact keeps the graph only.
    import onnx
    m = onnx.load(str(path))
    for node in m.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del m.metadata_props[:]
    del m.graph.value_info[:]
    m.graph.doc_string = ""
    # Weight decay leaves some dead weights as float32 denormals (seen: ~140 of 18k in an MLP trained
    # on the bar data), and a CPU multiplies denormals an order of magnitude slower (that model ran
    # 6x slower at batch 64 than the same architecture without them). They are zero in effect.
    for init in m.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            w = onnx.numpy_helper.to_array(init)
            tiny = (w != 0) & (np.abs(w) < np.finfo(np.float32).tiny)
            if tiny.any():
                init.CopyFrom(onnx.numpy_helper.from_array(np.where(tiny, np.float32(0), w).astype(np.float32), init.name))
    onnx.save(m, str(path))
    return path


def predict_torch(model, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[s:s + batch])).numpy()[:, 0]
                               for s in range(0, len(x), batch)])
