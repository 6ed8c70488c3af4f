"""The off-the-shelf peer: Seldon MLServer serving quantd's default model over the Open Inference
Protocol (KServe V2) on gRPC, as a user would set it up today. MLServer ships no ONNX runtime of
its own, so this is the custom runtime its documentation describes: one onnxruntime
InferenceSession (1 intra-op thread, all graph optimisations), one request's rows in, one score
per row out. The features come from the caller (quantd-load sends each tick's row as quantd
computes it); no policy, no risk. Used by `make bench` (scripts/bench.py --only peers) as a
comparison point; not part of quantd.
"""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.settings.parameters.uri, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        y = self.session.run([self.output], {self.input: x})[0]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[NumpyCodec.encode_output(self.output, y)])
