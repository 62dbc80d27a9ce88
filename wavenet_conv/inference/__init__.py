"""Inference: the loss over whole splits, and sampling (naive, full, cached: the same names)."""
