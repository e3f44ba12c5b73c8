"""Evaluation: scoring every test pair in both orders, generation, baselines, ranking, the evaluate stage."""
