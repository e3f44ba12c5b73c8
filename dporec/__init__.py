"""dporec: shared logic for the DPO-vs-SFT movie-ranking experiment.

Modules, by concept:
  config   - YAML schema, CLI overrides, run folders and run metadata
  data     - the thesis record format: loading, validation, balance, SFT/DPO rows, prompts
  movielens- building pairwise examples from MovieLens ratings (ML-1M, ML-100K via recbole)
  synthetic- MovieLens-format synthetic ratings for tests
  models   - backend choice (unsloth / hf), 4-bit loading, LoRA, adapters, tiny test model
  training - thin glue around TRL's SFTTrainer / DPOTrainer (resume, metrics, OOM advice)
  scoring  - likelihood scoring of both answers in both option orders; optional generation
  metrics  - the prediction-row contract and per-model metrics with user-clustered bootstrap intervals
  stats    - the paired permutation test over users and its CI, bootstrap, McNemar, test size, verdict
  analysis - from prediction rows to results.json content: comparisons, control arm, seeds
  report   - results.json, predictions.csv, plots, report.md, console tables

Nothing here imports transformers/trl/peft at module import time: Unsloth must be imported
before them when it is the chosen backend (see models.resolve_backend).
"""


class UserError(Exception):
    """A problem with the user's input (config, data file, paths): printed without a traceback."""
