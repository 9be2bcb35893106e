"""ragsoup: retrieval-augmented QA by souping cached Mamba2 states."""

__version__ = "0.1.0"
