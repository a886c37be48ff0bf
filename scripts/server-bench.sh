#!/usr/bin/env bash
# Thread sweep of a DeiT on a many-core CPU: our f32 and bf16 models, dense and idle, beside
# PyTorch eager fp32 and bf16 autocast (timm) when python3 has torch and timm.
#
# Usage: scripts/server-bench.sh [--model deit_small] [--threads 4,16] [--batches 32,1]
#            [--keep-rate 0.7] [--binary PATH] [--python PATH]
#
# For each (threads, batch) our four forms are timed interleaved in one `idlevit bench --bf16`
# run, then PyTorch's two forms right after, so every row is measured under the same
# conditions; compare ratios within a row. Without --binary, the release binary is built with
# cargo (a machine without Rust can take a binary built elsewhere for the same CPU family).
# The table goes to stdout in markdown, then the embedded digits model's top-1 in f32 and
# bf16 (the bf16 kernel on real data); the raw output of each run to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

model=deit_small
threads_list=4,16
batches=32,1
keep_rate=0.7
binary=""
python=python3
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model=$2; shift 2 ;;
        --threads) threads_list=$2; shift 2 ;;
        --batches) batches=$2; shift 2 ;;
        --keep-rate) keep_rate=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$binary" ]; then
    cargo build --release --locked -q -p idlevit-cli
    binary=target/release/idlevit
fi
[ -x "$binary" ] || { echo "no idlevit binary at $binary" >&2; exit 1; }

have_torch=0
if "$python" -c "import torch, timm" 2>/dev/null; then
    have_torch=1
else
    echo "($python has no torch and timm: PyTorch columns left empty)" >&2
fi

# images/s of one of our forms from `bench --bf16` output lines such as
#   "  dense       f32  92.50 images/s   bf16  64.70 images/s   bf16/f32 0.70x"
ours() { # output row precision
    awk -v row="$2" -v p="$3" '$1 == row { for (i = 2; i < NF; i++) if ($i == p) { print $(i + 1); exit } }' <<<"$1"
}

torch_ips() { # threads batch dtype
    [ "$have_torch" = 1 ] || { echo "-"; return; }
    "$python" xtask/python/timm_throughput.py --models "$model" --batches "$2" \
        --threads "$1" --dtype "$3" --runs 10 2>/dev/null |
        "$python" -c 'import json,sys
rows=[json.loads(l) for l in sys.stdin if "images_per_second" in l]
print("%.1f" % rows[-1]["images_per_second"] if rows else "-")'
}

echo "$model, keep rate $keep_rate, $(nproc) CPUs; images/s (medians), each row one run"
echo
echo "| threads, batch | bf16 kernel | ours f32 dense | ours f32 idle | ours bf16 dense | ours bf16 idle | idle speed-up / GMAC ratio, f32 and bf16 | torch fp32 | torch bf16 autocast |"
echo "|---|---|---|---|---|---|---|---|---|"
for threads in ${threads_list//,/ }; do
    for batch in ${batches//,/ }; do
        runs=5
        [ "$batch" = 1 ] && runs=20
        out=$("$binary" bench --model "$model" --batch "$batch" --threads "$threads" --bf16 \
            --keep-rate "$keep_rate" --policy idle --runs "$runs" --warmup 2 2>&1)
        echo "$out" >&2
        kernel=$(sed -n 's/.*bf16 kernel \([a-z0-9-]*\),.*/\1/p' <<<"$out")
        label="idle"
        per_gmac=$(sed -n 's/.*speed-up \/ GMAC ratio f32 \([0-9.]*\), bf16 \([0-9.]*\).*/\1, \2/p' <<<"$out")
        echo "| $threads, $batch | ${kernel:--} | $(ours "$out" dense f32) | $(ours "$out" "$label" f32) |" \
            "$(ours "$out" dense bf16) | $(ours "$out" "$label" bf16) | ${per_gmac:--} |" \
            "$(torch_ips "$threads" "$batch" fp32) | $(torch_ips "$threads" "$batch" bf16) |"
    done
done

# The bf16 products on real data: the embedded digits model on its held-out canvases in both
# precisions (with --bf16 on a CPU where bf16 cannot win, eval says so and runs f32).
top1() { # extra eval arguments
    "$binary" eval --config crates/train/assets/digits/config.json \
        --weights crates/train/assets/digits/model.safetensors --task digits "$@" 2>&1 |
        sed -n 's/.*top-1 \([0-9.]*%\).*/\1/p'
}
echo
echo "Embedded digits model, top-1 on its 449 held-out canvases: f32 $(top1), bf16 $(top1 --bf16)"
