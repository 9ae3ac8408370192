"""Dataset steps: ingest, subset, validate, describe, and the image decoding they all share."""
