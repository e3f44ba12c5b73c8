#!/usr/bin/env bash
# Fetch, on a machine that reaches the package registry, the wheels an offline GPU machine lacks, so
# benchmarks/gpu_run.sh can install them there with no network. Also copies a real BPE tokenizer for
# the benchmark models. Nothing here is committed: .whl/ is git-ignored.
#
# Commands:
#     bash benchmarks/gpu_wheels.sh            # -> .whl/*.whl (slimmed, one folder) + .whl/tokenizer-smollm2/
#     bash benchmarks/gpu_wheels.sh --full     # -> .whl/1/, .whl/2/: the unmodified wheels in two batches
#
# Target: a GPU machine with python3 3.12 (manylinux x86_64) and torch 2.11+cu130, transformers 5.17.0,
# peft, accelerate, numpy, pandas, pyarrow, ... already installed. What such a machine lacks, checked
# against every Requires-Dist of the wheels below (`unzip -p X.whl '*/METADATA' | grep ^Requires-Dist`):
#   trl, datasets (+ dill, multiprocess; fsspec pinned <=2026.2.0 by datasets), bitsandbytes,
#   unsloth, unsloth_zoo, xformers, torchao, cut_cross_entropy, tyro (+ docstring_parser, typeguard),
#   hf_transfer, msgspec, diffusers (+ importlib_metadata), structlog, nest_asyncio,
#   pydantic (+ pydantic_core, annotated_types, typing_inspection, typing_extensions>=4.16).
# Assumed present: torch, torchvision, triton, transformers, peft, accelerate, numpy, pandas, pyarrow,
#   huggingface_hub, safetensors, sentencepiece, protobuf, psutil, einops, regex, pillow, requests,
#   httpx, xxhash, filelock, jinja2, pyyaml, tqdm, rich, typer, click, wheel, packaging, zipp, aiohttp.
#
# Why slimmed wheels by default: the full set is ~99 MB; two wheels carry files a cu130 torch never
# loads:
#   bitsandbytes (43 MB): CUDA 11.8-12.8, ROCm and XPU builds of its library; only
#     libbitsandbytes_cuda130.so (+ cuda132 and cpu) is kept;
#   unsloth (31 MB): the "Unsloth Studio" web app (studio/: JS bundles, a web backend) that the
#     training library never imports.
# Dropping those files (and their RECORD lines) gives one ~35 MB folder that is quick to copy to the GPU
# machine and install in seconds.
#
# On the GPU machine (benchmarks/gpu_run.sh does this in every step), with .whl/ copied along:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#         --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi

FULL=0
[ "${1:-}" = "--full" ] && FULL=1

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # download DEST NAME==VERSION...
    local dest=$1; shift
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$dest" "$@" 2>&1 | grep -v "is ignored: it is neither" || true
    for spec in "$@"; do  # pip download can warn and go on; fail here if a wheel did not arrive
        local name=${spec%%==*}; local glob=${name//-/_}
        ls "$dest"/* 2>/dev/null | grep -qi "/${glob}-" || { echo "missing wheel: $spec" >&2; exit 1; }
    done
}

# Batch 1 (bitsandbytes and the TRL/datasets side); batch 2 (Unsloth and its own needs).
BATCH1=(bitsandbytes==0.50.2 trl==1.14.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0
        pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0)
BATCH2=(unsloth==2026.10.7 unsloth_zoo==2026.10.7 xformers==0.0.35 torchao==0.18.0 cut_cross_entropy==25.1.1
        tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.0 hf_transfer==0.1.9 msgspec==0.22.0
        diffusers==0.42.1 importlib_metadata==8.7.0 structlog==26.1.0 nest-asyncio==1.6.0)

mkdir -p .whl
if [ "$FULL" = 1 ]; then
    rm -rf .whl/1 .whl/2; rm -f .whl/*.whl
    download .whl/1 "${BATCH1[@]}"
    download .whl/2 "${BATCH2[@]}"
else
    rm -rf .whl/1 .whl/2; rm -f .whl/*.whl
    download .whl "${BATCH1[@]}" "${BATCH2[@]}"
    "$PY" - <<'EOF'
# Rewrite two wheels without files a cu130 torch never loads; RECORD keeps only what remains.
import glob, os, zipfile

def slim(path, drop):
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        kept = [i for i in src.infolist() if not drop(i.filename)]
        names = {i.filename for i in kept}
        for info in kept:
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(l for l in lines if l.split(",")[0] in names or l.split(",")[0].endswith("RECORD"))
                        + "\n").encode()
            dst.writestr(info, data)
    before, after = os.path.getsize(path), os.path.getsize(tmp)
    os.replace(tmp, path)
    print(f"slimmed {os.path.basename(path)}: {before/1e6:.1f} MB -> {after/1e6:.1f} MB")

keep_bnb = ("libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so", "libbitsandbytes_cpu.so")
slim(glob.glob(".whl/bitsandbytes-*.whl")[0],
     lambda n: n.startswith("bitsandbytes/libbitsandbytes_") and os.path.basename(n) not in keep_bnb)
slim(glob.glob(".whl/unsloth-2*.whl")[0], lambda n: n.startswith("studio/"))
EOF
fi

# A real BPE tokenizer (SmolLM2's, 49,152 tokens) so the benchmark's token counts per example are
# realistic; the random-weight models do not care which tokenizer they get. Only when prepared here.
SRC=models/smollm2-135m-instruct
if [ -f "$SRC/tokenizer.json" ]; then
    rm -rf .whl/tokenizer-smollm2 && mkdir -p .whl/tokenizer-smollm2
    cp "$SRC"/tokenizer.json "$SRC"/tokenizer_config.json .whl/tokenizer-smollm2/
    [ -f "$SRC/chat_template.jinja" ] && cp "$SRC/chat_template.jinja" .whl/tokenizer-smollm2/
else
    echo "note: $SRC not prepared (make models/smollm2-135m-instruct/config.json); the benchmark will" \
         "train its own small BPE tokenizer instead" >&2
fi

echo "--- wheels (MB):"
find .whl -type f -name '*.whl' -printf '%s %p\n' | sort -k2 | awk '{printf "%8.1f  %s\n", $1/1e6, $2}'
for d in .whl .whl/1 .whl/2 .whl/tokenizer-smollm2; do
    [ -d "$d" ] || continue
    du -sb "$d" | awk -v d="$d" '{printf "%-24s %6.1f MiB (the folder to copy to the GPU machine)\n", d, $1/1048576}'
done
