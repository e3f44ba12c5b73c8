"""Report: every sentence, table, file and plot a run writes or prints (no torch)."""
