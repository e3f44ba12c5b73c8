"""dporec: shared logic for the DPO-vs-SFT movie-ranking experiment.

Modules, by concept:
  config      - YAML schema and the command line (--config FILE, KEY=VALUE overrides)
  runs        - the run-folder layout: stages, finished markers, checkpoints, adapters, run metadata
  data        - the thesis record format: loading, validation, swap, SFT/DPO rows, prompts
  splits      - position balance, pairs DPO can learn from, users/ids shared between splits
  thesis      - the thesis's own contrastive_rec_train.jsonl as a data source
  ratings     - reading MovieLens ratings (ML-1M, ML-100K via recbole, synthetic)
  movielens   - building pairwise examples from ratings
  synthetic   - MovieLens-format synthetic ratings for tests
  baselines   - simple rules on the test pairs (popularity, genre overlap, ...)
  hardware    - GPU, precision and memory rules
  models      - backend choice (unsloth / hf), 4-bit loading, LoRA, adapters
  local_models- the tiny test Llama and the SmolLM2 GGUF conversion (no hub)
  processes   - one process or several under accelerate launch
  training    - thin glue around TRL's SFTTrainer / DPOTrainer (resume, metrics, OOM advice)
  health      - training health warnings
  scoring     - likelihood scoring of both answers in both option orders; optional generation
  metrics     - the prediction-row contract and per-model metrics with user-clustered bootstrap intervals
  stats       - the paired permutation test over users and its CI, bootstrap, McNemar, test size, verdict
  analysis    - from prediction rows to results.json content: comparisons, control arm, seeds
  report      - results.json, predictions.csv, report.md, console tables; plots - the figures

Nothing here imports transformers/trl/peft at module import time: Unsloth must be imported
before them when it is the chosen backend (see models.resolve_backend).
"""


class UserError(Exception):
    """A problem with the user's input (config, data file, paths): printed without a traceback."""
