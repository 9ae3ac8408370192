"""Candidate models. Every candidate is an `EmbeddingModel`: image batch in, (embedding, logits) out."""
