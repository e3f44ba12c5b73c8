"""Several adapters on one 4-bit base: load the base once with every adapter attached, then switch between
them (and the bare base)."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from dporec.runs.adapters import check_adapter


def attach_adapters(model, adapters: dict[str, str | Path], base_name: str | None = None):
    """Load several adapters onto one (4-bit) base, for switching with active(...).

    The base is loaded once; each adapter adds only its LoRA weights.
    """
    from peft import PeftModel
    peft_model = None
    for name, path in adapters.items():
        check_adapter(path, base_name)
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            peft_model.load_adapter(str(path), adapter_name=name)
    result = peft_model if peft_model is not None else model
    result.eval()
    return result


def load_with_adapters(cfg: dict, backend: str, adapters: dict[str, str | Path | None]):
    """(model, tokenizer): the base once, with every adapter of `adapters` attached (None = the base
    itself), in eval mode; what the evaluation, the on-policy sampling and recommend.py score with."""
    from dporec.modeling import backends
    base, tok = backends.load_base(cfg, backend)
    with_adapters = {n: p for n, p in adapters.items() if p is not None}
    model = attach_adapters(base, with_adapters, cfg["model"]["name"]) if with_adapters else base
    model.eval()
    return model, tok


def active(model, name: str, adapters: dict):
    """Context in which `model` behaves as model `name`: its adapter set, or (path None) the base with
    every adapter disabled."""
    if adapters[name] is None:
        return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    model.set_adapter(name)
    return nullcontext()
