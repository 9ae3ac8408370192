"""Kubeflow pipeline definitions (compiled specs beside them)."""
