"""Registers the compiled csrc ops with the dispatch when the extension is built (optional)."""
