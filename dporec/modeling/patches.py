"""What another backend has patched: model classes whose forward is no longer the library's own.

Unsloth replaces Llama's model, decoder-layer and attention forwards at class level when it loads a model
(`FastLlamaModel.pre_patch`) and never restores them; `import unsloth` also rewrites TRL's trainers. Every
later model of the process then runs the patched code: in training, its LlamaModel forward drops a 4D
attention mask, so the shared-prompt DPO would let the rejected answer see the chosen one. Three consumers
ask the same question here: the process setup (a stage on hf never runs in a patched process), the DPO
trainer (it refuses a patched decoder) and scoring (Unsloth's forward cannot continue a cached prefix).
"""
from __future__ import annotations

import inspect
import sys

# Where a model class's forward may come from and still be the stack's own code (transformers_modules: a
# checkpoint's own modelling code, trust_remote_code).
OWN = ("transformers.", "transformers_modules.", "torch.", "peft.", "bitsandbytes.", "accelerate.")


def _foreign(cls) -> str | None:
    """The module of cls.forward when it is not the stack's own, else None."""
    forward = getattr(cls, "forward", None)
    module = getattr(forward, "__module__", None) or ""
    return None if not forward or module.startswith(OWN) else module


def model_patches(model) -> list[str]:
    """'Class.forward (module)' for every module type in `model` whose forward another library replaced."""
    seen, out = set(), []
    for m in model.modules():
        cls = type(m)
        if cls in seen:
            continue
        seen.add(cls)
        module = _foreign(cls)
        if module:
            out.append(f"{cls.__name__}.forward ({module})")
    return out


def process_patches() -> list[str]:
    """What this process has patched so far, without importing anything: Unsloth imported (it rewrites TRL's
    trainers on import) and every transformers model class whose forward is no longer transformers' own."""
    out = ["unsloth is imported (it rewrites TRL's trainers)"] if "unsloth" in sys.modules else []
    for name, mod in list(sys.modules.items()):
        if not name.startswith("transformers.models.") or ".modeling_" not in name or mod is None:
            continue
        for cls in vars(mod).values():
            if inspect.isclass(cls) and cls.__module__ == name and "forward" in vars(cls):
                module = _foreign(cls)
                if module:
                    out.append(f"{cls.__name__}.forward ({module})")
    return out
