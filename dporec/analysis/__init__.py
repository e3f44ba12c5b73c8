"""Analysis, numbers only (numpy/scipy): metrics, resampling, the paired comparison, seeds, ranking."""
