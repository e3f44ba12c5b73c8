#!/usr/bin/env bash
# The GPU proof: the Unsloth-vs-transformers benchmark and the end-to-end run, in steps that each fit
# a 10-minute command on a GPU machine without network access, and each stand alone: every step
# reinstalls the copied wheels (seconds) and rebuilds what it needs; on a machine that still holds
# /tmp/site, /tmp/bench models and finished runs from an earlier step, they are reused.
#
# Beforehand, on a machine with registry access:
#     bash benchmarks/gpu_wheels.sh        # .whl/*.whl (~35 MiB, slimmed) + .whl/tokenizer-smollm2/
# Then one command per step, with .whl/ copied along; `bench` first (the measurement the predictions need):
#     bash benchmarks/gpu_run.sh bench     # THE one-shot measurement (~8 min on an H100, estimated): the
#                                          #   stack check (stops when torch/bitsandbytes don't fit), then on
#                                          #   the Llama-3-8B shape (random NF4 weights) both SFTs and the three
#                                          #   DPO routes (Unsloth; hf with and without the shared prompt)
#     bash benchmarks/gpu_run.sh e2e       # ~5 min: verify_setup --smoke, then SFT -> DPO -> eval, hf + unsloth
#     bash benchmarks/gpu_run.sh small     # ~6 min: bench_train --shape small, 1x8 + 4x2, hf + unsloth
#     bash benchmarks/gpu_run.sh 8b        # ~8 min: the 8B shape at batch 1 x accum 8, with evaluation
#     bash benchmarks/gpu_run.sh 8b-4x2    # ~8 min: the 8B shape at batch 4 x accum 2
# Each step writes to $OUT: <step>.log (the console), bench_<shape>.json or e2e results, and
# <step>-runs.tgz (every child's log, metrics.json, run_info.json). A step cut off by its time limit
# still leaves what it finished (the JSON is rewritten after every stage), and rerunning it on the
# same machine continues where it stopped. The 8B steps also write benchmarks/results/<gpu>.json (tokens/s,
# MFU by the predictor's FLOP convention, peak memory, the stack and whether xformers loaded; copy it
# back into the checkout and commit it: verify_setup.py --utilisation benchmarks/results/<gpu>.json
# predicts from it).
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?usage: bash benchmarks/gpu_run.sh bench|e2e|small|8b|8b-4x2}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BENCH=/tmp/bench                      # models, data and runs; reused by later steps on the same machine
LOG="$OUT/$STEP.log"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
       PYTHONUNBUFFERED=1 WANDB_DISABLED=true
exec > >(tee "$LOG") 2>&1

# --- install the copied wheels; skipped when this machine installed them in an earlier step
if [ ! -f /tmp/site/.installed ]; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl: run benchmarks/gpu_wheels.sh on a machine with registry access and copy .whl/ here"; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    touch /tmp/site/.installed
fi
export PYTHONPATH=/tmp/site
TOK=.whl/tokenizer-smollm2
TOKARG=(); [ -f "$TOK/tokenizer.json" ] && TOKARG=(--tokenizer "$TOK")
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -m pip list 2>/dev/null | grep -iE "^(torch|transformers|trl|peft|bitsandbytes|datasets|accelerate|unsloth|unsloth.zoo|xformers|torchao|triton) "

pack() {  # pack FOLDER...: child logs and metrics (not the adapters) into one file
    tar czf "$OUT/$STEP-runs.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' \
        --exclude='checkpoint-*' "$@" 2>/dev/null || true
}

case "$STEP" in
bench)
    # The dry run first: the wheels copied here target this machine's torch; xformers 0.0.35 is built for
    # torch 2.10.0+cu128 (what requirements.txt installs), so here its kernels may not load and Unsloth
    # then runs PyTorch attention: accepted, and recorded in the results file beside every figure.
    python3 benchmarks/bench_train.py --shape llama3-8b --out $BENCH --check-stack --accept-no-xformers || exit 1
    df -h /tmp | tail -1   # the bf16 build takes ~16 GB before it is quantised to ~5.7 GB
    # Unsloth first: its routes have never been measured. 5 steps, 2 of them warm-up, no evaluation.
    timeout 520 python3 benchmarks/bench_train.py --shape llama3-8b --backends unsloth,hf --batch-sizes 1x8 \
        --steps 5 --warmup-steps 2 --eval-pairs 0 --prequantize --accept-no-xformers --out $BENCH \
        --model-dir $BENCH/models/llama3-8b-nf4 --predict-3090 "${TOKARG[@]}"
    cp $BENCH/bench_llama3-8b.json "$OUT/" 2>/dev/null; pack $BENCH/runs/llama3-8b
    cp benchmarks/results/*.json "$OUT/" 2>/dev/null   # the per-GPU results verify_setup --utilisation reads
    ;;
e2e)
    # The Unsloth path end to end (and the hf one beside it) on the small random-weight model:
    # configs/tiny.yaml's short schedule with the thesis's optimizer and checkpointing.
    timeout 90 python3 benchmarks/bench_train.py --shape small --out $BENCH --build-only "${TOKARG[@]}" || exit 1
    M=$BENCH/models/small; D=$BENCH/data
    python3 -c "import unsloth, trl, bitsandbytes, xformers; print('imports ok: unsloth', unsloth.__version__)"
    # --smoke: the backends the real run uses (SFT under Unsloth, the shared-prompt DPO on hf in a child)
    timeout 180 python3 verify_setup.py --config configs/llama3_8b.yaml --smoke model.name=$M \
        data.train_file=$D/train.jsonl data.val_file=$D/val.jsonl data.test_file=$D/test.jsonl
    for B in unsloth hf; do
        O=/tmp/e2e/$B
        COMMON=(model.name=$M model.backend=$B output_dir=$O data.train_file=$D/train.jsonl
                data.val_file=$D/val.jsonl data.test_file=$D/test.jsonl train.optim=adamw_8bit
                train.gradient_checkpointing=true --overwrite)
        # Unsloth cannot run the shared-prompt DPO forward (a custom mask): DPO under Unsloth shares nothing
        [ "$B" = unsloth ] && COMMON+=(dpo.prefix_sharing=false)
        echo "=== $B: SFT -> DPO (from SFT) -> evaluation"
        timeout 150 python3 train_sft.py --config configs/tiny.yaml "${COMMON[@]}" &&
        timeout 150 python3 train_dpo.py --config configs/tiny.yaml "${COMMON[@]}" &&
        timeout 120 python3 evaluate_dpo.py --config configs/tiny.yaml "${COMMON[@]}"
        echo "=== $B: exit status $?"
        cp $O/eval/results.json "$OUT/e2e-$B-results.json" 2>/dev/null
        cp $O/eval/report.md "$OUT/e2e-$B-report.md" 2>/dev/null
    done
    pack /tmp/e2e
    ;;
small)
    timeout 560 python3 benchmarks/bench_train.py --shape small --backends hf,unsloth --batch-sizes 1x8,4x2 \
        --steps 8 --eval-pairs 32 --out $BENCH --predict-3090 "${TOKARG[@]}"
    cp $BENCH/bench_small.json "$OUT/"; pack $BENCH/runs/small
    ;;
8b | 8b-4x2)
    BATCH=1x8; [ "$STEP" = 8b-4x2 ] && BATCH=4x2   # the bench step's NF4 model; runs of their own (--out)
    df -h /tmp | tail -1   # the bf16 build takes ~16 GB before it is quantised
    timeout 560 python3 benchmarks/bench_train.py --shape llama3-8b --backends hf,unsloth --batch-sizes $BATCH \
        --steps 6 --eval-pairs 16 --accept-no-xformers --prequantize --out $BENCH/$STEP \
        --model-dir $BENCH/models/llama3-8b-nf4 --predict-3090 "${TOKARG[@]}"
    cp $BENCH/$STEP/bench_llama3-8b.json "$OUT/bench_llama3-8b-$BATCH.json"; pack $BENCH/$STEP/runs/llama3-8b
    cp benchmarks/results/*.json "$OUT/" 2>/dev/null   # the per-GPU results verify_setup --utilisation reads
    ;;
*)
    echo "unknown step $STEP: use bench, e2e, small, 8b or 8b-4x2"; exit 2 ;;
esac
