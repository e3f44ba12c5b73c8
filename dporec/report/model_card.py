"""README.md of an adapter folder: the model card a trained stage writes beside its adapter."""
from __future__ import annotations

from dporec import arms


def model_card(spec: arms.StageSpec, cfg: dict, m: dict) -> str:
    """README.md of an adapter folder: what it is (base, stage, data, reference), its headline training
    numbers, and how to use it. Replaces PEFT's generated card, which cannot name the base or the data.
    `cfg`: the stage's effective config."""
    base, d, kind = cfg["model"]["name"], cfg["data"], spec.stage.kind
    if spec.arm:
        what = arms.by_name(spec.arm).card
    elif kind == "sft":
        what = "supervised fine-tuning (SFT) on the chosen answers"
    else:
        what = "DPO from " + ("the SFT adapter" if spec.init_adapter else "the base model")
    if kind == "dpo":
        what += f" (beta {cfg['dpo']['beta']}, loss {'+'.join(cfg['dpo']['loss_type'])})"
    ev = m.get("final_eval") or {}
    numbers = [f"- optimizer steps: {m.get('steps')}, training examples: {m.get('n_train')}, "
               f"validation examples: {m.get('n_val')}"]
    if m.get("final_train_loss") is not None:
        numbers.append(f"- mean training loss: {m['final_train_loss']:.4f}")
    if ev.get("eval_loss") is not None:
        numbers.append(f"- final validation loss: {ev['eval_loss']:.4f}")
    if ev.get("eval_rewards/accuracies") is not None:
        numbers.append(f"- final validation reward accuracy: {ev['eval_rewards/accuracies']:.3f}, "
                       f"reward margin {ev.get('eval_rewards/margins', float('nan')):.4f}")
    if m.get("reference_model"):
        numbers.append(f"- DPO reference: {m['reference_model']}")
    out = cfg["output_dir"]
    folder = f"{out}/{spec.stage.name}"
    return "\n".join([
        f"# LoRA adapter: {spec.stage.label} of {base} for pairwise movie recommendation", "",
        f"A LoRA adapter (r={cfg['lora']['r']}, alpha={cfg['lora']['alpha']}) on **{base}** "
        f"({'4-bit NF4' if cfg['model']['load_in_4bit'] else 'unquantized'}), trained by {what}.",
        f"Task: given a user's {d['history_len']} most recent liked movies and two candidates, say which one "
        f"the user "
        f"will like (\"The better recommendation is Option A.\"). Data: {d['train_file']} "
        f"(validation {d['val_file']}); seed {cfg['seed']}.", "",
        "## Training", "", *numbers, "",
        "Curves: training_curves.png. Everything recorded: metrics.json, config.yaml, run_info.json.",
        f"Evaluation against base and SFT on held-out users: {out}/{arms.EVAL.name}/report.md "
        f"(evaluate_dpo.py).", "",
        "## Use", "",
        "```bash",
        f"python recommend.py --config {folder}/config.yaml --adapter {folder} --input my_users.jsonl",
        f"python export.py --adapter {folder} --out merged-{spec.stage.name}   # one 16-bit model, no PEFT",
        "```", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"base = AutoModelForCausalLM.from_pretrained(\"{base}\")",
        f"model = PeftModel.from_pretrained(base, \"{folder}\")",
        "```", ""])
