"""Rate-law library (stub: being written)."""
