"""One merged 16-bit model from the 4-bit base and a trained adapter (what export.py runs).

The adapter was trained on the 4-bit base, so the merge starts from exactly the weights it saw: the base
is loaded as its run loaded it (config.yaml in the adapter folder), dequantized, and the LoRA update is
added in full precision before the cast to --dtype. Under Unsloth, Unsloth's own merged save does this.
The folder loads with transformers alone (no PEFT, no bitsandbytes) and serves with vLLM or llama.cpp.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from dporec import UserError, runs
from dporec.config import load_config, updated

DTYPES = ("bfloat16", "float16", "float32")


def adapter_run_config(adapter: Path, base: str | None) -> dict:
    """The config the adapter was trained with (its config.yaml), else defaults with its recorded base."""
    acfg = runs.check_adapter(adapter)
    cfg = load_config(adapter / "config.yaml") if (adapter / "config.yaml").is_file() else load_config(None)
    name = base or (cfg["model"]["name"] if (adapter / "config.yaml").is_file()
                    else acfg.get("base_model_name_or_path"))
    if not name:
        raise UserError(f"{adapter}: no config.yaml and no base_model_name_or_path in adapter_config.json; "
                        "pass --base NAME")
    return updated(cfg, {"model.name": name})


def claim_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UserError(f"{out} exists and is not empty; pass --overwrite to replace it, "
                            "or choose another --out")
    runs.check_writable(out)


def export(adapter: str | Path, out: str | Path, dtype: str = "bfloat16", base: str | None = None,
           backend: str = "auto", overwrite: bool = False) -> Path:
    """Write the merged model (weights, config, tokenizer, model card, export_info.json) into `out`."""
    import torch

    from dporec.modeling import backends
    adapter, out = Path(adapter), Path(out)
    cfg = adapter_run_config(adapter, base)
    runs.check_adapter(adapter, cfg["model"]["name"])
    claim_out(out, overwrite)
    cfg = updated(cfg, {"model.backend": backend})
    chosen = backends.backend_for(cfg)
    if chosen == "unsloth":
        # Unsloth's merged save dequantizes the 4-bit base itself; it writes the model's 16-bit dtype
        model, tok = backends.load_for_training(cfg, chosen, adapter=adapter)
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained_merged(str(out), tok, save_method="merged_16bit")
    else:
        model, tok = backends.load_base(cfg, chosen)
        if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
            model.dequantize()  # the 4-bit weights the adapter was trained on, exactly, in the compute dtype
        from peft import PeftModel
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged = merged.to(getattr(torch, dtype))
        shutil.rmtree(out, ignore_errors=True)
        merged.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
    info = {"adapter": str(adapter), "adapter_sha256": runs.input_record({"a": adapter})["a"]["sha256"],
            "base": cfg["model"]["name"], "base_loaded_in_4bit": cfg["model"]["load_in_4bit"],
            "dtype": dtype, "backend": chosen}
    (out / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(model_card(adapter, info))
    print(f"[export] merged {adapter} into {cfg['model']['name']} -> {out} ({dtype}, {chosen})")
    return out


def model_card(adapter: Path, info: dict) -> str:
    base = "4-bit NF4 base (dequantized)" if info["base_loaded_in_4bit"] else "base"
    return (f"# Merged model: {info['base']} + the adapter {adapter}\n\n"
            f"The LoRA adapter merged into the {base} it was trained on, saved in {info['dtype']}. "
            "Loads without PEFT:\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER\")\n```\n\n"
            "Serve it with vLLM (`vllm serve THIS_FOLDER`), or convert it for llama.cpp "
            "(`python convert_hf_to_gguf.py THIS_FOLDER`). What the adapter was trained for: "
            f"{adapter}/README.md. Export facts: export_info.json.\n")
