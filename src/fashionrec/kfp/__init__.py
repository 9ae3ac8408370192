"""Kubeflow Pipelines: compile, submit, schedule and run locally (`client`); parameter coercion and the
HTML pages components show (`io`). Only components/, pipelines/ and the CLI import this package."""
