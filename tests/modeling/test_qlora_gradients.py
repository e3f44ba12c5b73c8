"""QLoRA on CPU computes the same LoRA gradients as full precision with the same (dequantized) weights.

bitsandbytes warns on CPU that some 4-bit kernels have no autograd formula; this shows the training
path is unaffected: every LoRA parameter, in every layer, gets the gradient an fp32 twin gets.
"""
import torch

from dporec.config import load_config
from dporec.modeling import backends


def _load(tiny_model, four_bit: bool):
    cfg = load_config(None, [f"model.name={tiny_model}", "train.gradient_checkpointing=false",
                                    "lora.r=4", f"model.load_in_4bit={str(four_bit).lower()}"])
    return backends.load_for_training(cfg, "hf")


def test_4bit_lora_gradients_match_dequantized_fp32(tiny_model):
    import bitsandbytes.functional as F

    m4, tok = _load(tiny_model, True)
    m32, _ = _load(tiny_model, False)
    quantized = {n: mod for n, mod in m4.named_modules() if type(mod).__name__ == "Linear4bit"}
    assert quantized, "the 4-bit load should quantize the linear layers"
    torch.manual_seed(1)
    with torch.no_grad():
        for name, mod in m32.named_modules():
            if name in quantized:
                q = quantized[name].weight
                mod.weight.copy_(F.dequantize_4bit(q.data, q.quant_state))
        # lora_B starts at zero, which would leave lora_A without gradient: give both the same values
        for (n4, p4), (n32, p32) in zip(m4.named_parameters(), m32.named_parameters()):
            if "lora_" in n4:
                assert n4 == n32
                v = torch.randn_like(p4) * 0.1
                p4.copy_(v)
                p32.copy_(v)

    batch = tok(["### Response:\nThe better recommendation is Option A. Reasoning: it fits."] * 2,
                return_tensors="pt")
    grads = []
    for m in (m4, m32):
        m.zero_grad()
        m(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    g4, g32 = grads
    assert set(g4) == set(g32) and len(g4) == 2 * 7 * 2  # 2 layers x 7 modules x (A, B)
    for name in g4:
        assert g4[name] is not None and g4[name].abs().sum() > 0, name
        torch.testing.assert_close(g4[name], g32[name], rtol=1e-4, atol=1e-6)
