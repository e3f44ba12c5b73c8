"""Data: the task contract, pair records, splits, candidate sets and the sources of pairs (no torch)."""
