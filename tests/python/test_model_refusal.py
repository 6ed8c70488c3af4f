"""The server refuses a model that does not fit it, with a clear message, and does not start."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import BINARY, REPO

DEFAULT = REPO / "models" / "quantd-mlp" / "1"


def copy_default(tmp_path):
    models = tmp_path / "models"
    dst = models / "quantd-mlp" / "1"
    shutil.copytree(DEFAULT, dst)
    return models, dst


def edit_manifest(dst, pattern, repl):
    p = dst / "manifest.toml"
    text, n = re.subn(pattern, repl, p.read_text(), count=1, flags=re.M)
    assert n == 1, pattern
    p.write_text(text)


def serve_refuses(quantd, models, *needles):
    server = quantd(models=models)
    code = server.wait_exit()
    log = "".join(server.log)
    assert code != 0, log
    for needle in needles:
        assert needle in log, f"{needle!r} not in:\n{log}"


def test_refuses_a_schema_hash_that_differs(tmp_path, quantd):
    models, dst = copy_default(tmp_path)
    edit_manifest(dst, r'^schema_hash = ".*"$', 'schema_hash = "' + "0" * 64 + '"')
    serve_refuses(quantd, models, "refused", "feature schema hash")


def test_refuses_golden_rows_that_do_not_reproduce(tmp_path, quantd):
    models, dst = copy_default(tmp_path)
    edit_manifest(dst, r"^output = \[(.*)\]$", "output = [123.0]")
    serve_refuses(quantd, models, "golden row 0")


def test_refuses_a_model_file_that_does_not_match_its_sha256(tmp_path, quantd):
    models, dst = copy_default(tmp_path)
    data = bytearray((dst / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / "model.onnx").write_bytes(bytes(data))
    serve_refuses(quantd, models, "sha256 of model.onnx")


def test_refuses_a_model_whose_real_input_shape_differs(tmp_path):
    """A real ONNX model with 13 inputs, its manifest claiming the server's 14: caught at load."""
    models, dst = copy_default(tmp_path)
    w = numpy_helper.from_array(np.ones((1, 13), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["features", "w"], ["score"], transB=1)], "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 13])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, dst / "model.onnx")
    sha = hashlib.sha256((dst / "model.onnx").read_bytes()).hexdigest()
    edit_manifest(dst, r'^sha256 = ".*"$', f'sha256 = "{sha}"')
    r = subprocess.run([str(BINARY), "verify-model", str(dst)], capture_output=True, text=True)
    assert r.returncode != 0
    assert 'model input "features" is Float32 [-1, 13], manifest says Float32 [-1, 14]' in r.stderr, r.stderr


def test_the_committed_default_model_verifies():
    r = subprocess.run([str(BINARY), "verify-model", str(DEFAULT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "8 golden rows reproduced" in r.stdout
