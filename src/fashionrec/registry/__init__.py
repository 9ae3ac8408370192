"""Gate, ONNX export with parity checks, and the MLflow registry (aliases, promotion, rollback)."""
