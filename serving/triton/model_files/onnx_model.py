"""One ONNX network (``model.onnx`` beside this file) on ONNX Runtime inside Triton's Python backend, for servers
without the onnxruntime backend. Written by ``imagpose export triton --runtime python``; needs only numpy and
onnxruntime (onnxruntime-gpu for KIND_GPU instances) in the Python backend's environment."""

import json
import os

import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        providers = ["CPUExecutionProvider"]
        if args["model_instance_kind"] == "GPU" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(path, sess_options=options, providers=providers)
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            try:
                outputs = self.session.run(self.outputs, feed)
            except Exception as exc:  # ONNX Runtime's own error types (shape, type): this request's error only
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            tensors = [pb_utils.Tensor(name, value) for name, value in zip(self.outputs, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
