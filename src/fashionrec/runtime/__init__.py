"""Running a model: ONNX Runtime sessions and runners (no torch), plus the PyTorch side of it (eager runner,
ONNX export, parity checks, int8 quantization), which only training, evaluation and export import."""
