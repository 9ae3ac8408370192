"""Serving: the FastAPI app (ONNX Runtime + a neighbour index from a deploy bundle) and its request handling.

Nothing here imports torch: a server process holds ONNX Runtime, numpy, the index and the item table.
"""
