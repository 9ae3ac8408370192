"""Deploy bundles: the immutable, checksummed folder format (model + embeddings + items + index) and the
store around it (versions, locks, the `current` pointer, the activation history)."""
