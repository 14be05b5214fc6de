"""Registers the Triton kernels with the dispatch when triton imports (optional)."""
