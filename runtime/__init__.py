"""The torch-free edge runtime: sources, backends (TensorRT, ONNX Runtime), pipeline,
sinks, latency statistics and the bench command."""
