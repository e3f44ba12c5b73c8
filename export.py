"""Merge a trained adapter into its base: one 16-bit model folder that transformers loads without PEFT
or bitsandbytes, for vLLM, llama.cpp (GGUF) or any transformers code.

Commands:
    # CPU smoke run: the tiny model's DPO adapter (after run_experiment.py --config configs/tiny.yaml)
    python export.py --adapter runs/tiny/dpo --out runs/tiny/merged --dtype float32
    # the thesis run's DPO adapter, bfloat16 (16 GB for Llama 3 8B); float16 for GPUs without bf16
    python export.py --adapter runs/llama3_8b/dpo --out exports/llama3-8b-dpo
    python export.py --adapter runs/llama3_8b/dpo --out exports/llama3-8b-dpo --dtype float16 --overwrite
    # then, e.g.:  vllm serve exports/llama3-8b-dpo
    #              python llama.cpp/convert_hf_to_gguf.py exports/llama3-8b-dpo --outtype q8_0

Assumptions:
  - The base and its loading (4-bit or not) come from the adapter folder's config.yaml (written by
    training); --base NAME loads another copy of the same model (e.g. a local folder).
  - The merge starts from the weights the adapter was trained against: a 4-bit base is dequantized
    first, so the merged model scores like the adapter on its 4-bit base (tests/inference/test_export.py).
  - Memory: the whole model in 16-bit (about 16 GB for 8B parameters) in RAM or on the GPU.
  - backend auto: Unsloth's merged save on a CUDA GPU with unsloth installed, transformers + PEFT elsewhere.
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.export(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
