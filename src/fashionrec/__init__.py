"""fashionrec: photo in, the five most similar inventory items out."""

__version__ = "0.1.0"
