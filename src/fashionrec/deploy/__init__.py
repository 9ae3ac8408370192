"""Deploy: embed the inventory with the champion's ONNX model into an immutable, checksummed bundle,
smoke-test it, switch serving over to it atomically, and roll back."""
