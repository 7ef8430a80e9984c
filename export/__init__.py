"""Export: torch -> ONNX with the memory banks as constants, graph checks, ONNX -> TensorRT
engine (the engine builder is torch-free so it runs on the Jetson), bundle writing."""
