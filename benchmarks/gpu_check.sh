#!/usr/bin/env bash
# GPU check (issues 15 and 17): everything a CPU cannot show, in one run of <= 8 minutes on one
# H100/H200, leaving a report file and a summary table.
#
# Invocation, from the repository root:
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"  # once, online
#   bash benchmarks/gpu_check.sh
# On a machine without internet, carry a .venv whose torch was built with CUDA, or point
# PYTHON at an interpreter that has torch (CUDA) and the package's dependencies: the script
# installs nothing, puts src/ on PYTHONPATH itself, and uses $PYTHON, default .venv/bin/python,
# else python3. The env part lists the dependencies that interpreter lacks. The report goes to
# $OUT/gpu_check_report.md when $OUT is set (part logs in $OUT/gpu_check/PART.log), else
# runs/gpu_check_report/report.md with the part logs next to it.
#
# Without CUDA (or with GPU_CHECK_DRY=1) it runs in dry mode: every part still runs, on the CPU
# with tiny budgets where that is cheap, and parts that mean nothing there print "SKIP (dry)".
# That checks the plumbing; its numbers mean nothing.
#
# Parts, in this order (each under `timeout`, and under the overall budget GPU_CHECK_BUDGET
# seconds, default 460; a failing part never stops the next one; parts the budget no longer
# allows are listed as SKIP):
#   env         GPU name, torch/CUDA versions, the peak FLOP/s the trainer divides by
#   cuda-tests  tests/test_cuda.py: bf16 parity, fp16 + GradScaler 30 steps with scaler resume,
#               compile without graph breaks, fused AdamW, attention kernels, MoE grouped GEMM,
#               one sync per training step
#   attention   which SDPA kernels accept our unmasked bf16 / masked / fp32 calls
#   syncs       synchronising CUDA calls in one `small` and one `moe` training step
#   compile     a compiled `small` training step over 3 lengths, graph breaks and recompiles logged
#   generate    greedy CUDA vs greedy CPU (same text), and sampled generation on CUDA
#   serve       `minimind serve` on CUDA, two default-temperature requests with curl
#   bench-train `bench train --preset small/base --dtype bf16 --compile`: tokens/s and MFU
#   bench-infer `bench infer --compile` vs transformers at batch 1/16/64 (eager and compiled decode,
#               whose greedy tokens are checked against eager)
#   quickstart  `minimind quickstart --full` on CUDA with small step counts

set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
if [ -n "${OUT:-}" ]; then
    REPORT_DIR=$OUT/gpu_check
else
    REPORT_DIR=$ROOT/runs/gpu_check_report  # runs/ is git-ignored: nothing stale travels with the tree
fi
mkdir -p "$REPORT_DIR"
REPORT=$REPORT_DIR/report.md
[ -n "${OUT:-}" ] && REPORT=$OUT/gpu_check_report.md
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BUDGET=${GPU_CHECK_BUDGET:-460}
START=$(date +%s)
export PYTHONPATH="$ROOT/src:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA device visible to $PY: dry mode (plumbing only, CPU, tiny budgets)"
    DRY=1
fi
DEV=cuda
[ "$DRY" = 1 ] && DEV=cpu

{
    echo "# GPU check report"
    echo
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), dry=$DRY"
    echo
} >"$REPORT"
SUMMARY=()

# run_part NAME CAP_SECONDS COMMAND...: time-boxed, logged, summarised; never exits the script.
run_part() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        SUMMARY+=("$(printf '%-12s %-8s %5s  %s' "$name" "SKIP" "-" "overall budget of ${BUDGET}s spent")")
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    local log=$REPORT_DIR/$name.log t0 rc status
    t0=$(date +%s)
    echo "== $name (at most ${cap}s)"
    # a fresh bash runs the part function (exported below), so `timeout` can kill the whole part
    timeout -k 10 "$cap" bash -c "$*" >"$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=TIMEOUT ;;
        *) status="FAIL($rc)" ;;
    esac
    grep -q '^SKIP (dry)' "$log" && [ $rc = 0 ] && status=SKIP
    local key
    key=$(grep -E '^(RESULT|SKIP \(dry\))' "$log" | tail -n 3 | tr '\n' ' ' | cut -c1-150)
    SUMMARY+=("$(printf '%-12s %-8s %5s  %s' "$name" "$status" "$(($(date +%s) - t0))" "$key")")
    {
        echo "## $name: $status ($(($(date +%s) - t0)) s)"
        echo
        echo '```'
        tail -n 60 "$log"
        echo '```'
        echo
    } >>"$REPORT"
    echo "   $status"
}

part_env() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" - <<'EOF'
import importlib.util
missing = [m for m in ("torch", "safetensors", "tokenizers", "tqdm", "numpy", "fastapi", "uvicorn", "pytest",
                       "transformers") if importlib.util.find_spec(m) is None]
print("python packages missing:", ", ".join(missing) or "none",
      "(transformers only matters for bench-infer's baseline, fastapi/uvicorn for serve)")
import torch
from minimind.train.metrics import peak_flops
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    d = torch.device("cuda")
    name = torch.cuda.get_device_name(d)
    peak = peak_flops(d, torch.bfloat16)
    print(f"RESULT gpu={name!r} capability={torch.cuda.get_device_capability(d)} peak_bf16={peak and peak / 1e12:.0f} TFLOP/s")
else:
    print("RESULT no CUDA device")
EOF
}

part_cuda_tests() {
    "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -rA -s tests/test_cuda.py 2>&1
    local rc=$?
    echo "RESULT pytest exit $rc$([ "$DRY" = 1 ] && echo ' (dry: every test skips without CUDA)')"
    return $rc
}

part_attention() {
    if [ "$DRY" = 1 ]; then echo "SKIP (dry): SDPA kernels exist only on CUDA"; return 0; fi
    "$PY" - <<'EOF'
from test_cuda import ATTENTION_CASES, attention_backends
found = attention_backends()
for case, (_, _, want) in ATTENTION_CASES.items():
    print(f"RESULT {case}: runs on {found[case]} (wanted {want})")
EOF
}

part_syncs() {
    if [ "$DRY" = 1 ]; then echo "SKIP (dry): torch.cuda.set_sync_debug_mode needs CUDA"; return 0; fi
    "$PY" - "$WORK/syncs" <<'EOF'
import sys
from pathlib import Path
from minimind.config import get_preset
from test_cuda import sync_warnings
bad = 0
for preset in ("small", "moe"):
    found = sync_warnings(get_preset(preset), Path(sys.argv[1]) / preset, seq_len=256)
    print(f"RESULT {preset}: {len(found)} synchronising call(s) per step (want 1)")
    for message in found:
        print("   ", message)
    bad += len(found) != 1
sys.exit(bad)
EOF
}

part_compile() {
    if [ "$DRY" = 1 ]; then echo "SKIP (dry): inductor on CUDA only (tests/test_gpu_paths.py checks graph breaks with the eager backend)"; return 0; fi
    TORCH_LOGS="graph_breaks,recompiles" "$PY" - <<'EOF'
import torch
from torch._dynamo.utils import counters
from minimind.config import get_preset
from minimind.model import MiniMindLM
model = MiniMindLM(get_preset("small")).cuda().train()
compiled = torch.compile(model)
for T in (256, 384, 512):  # as SFT batches do: the length changes every step
    ids = torch.randint(0, 6400, (8, T), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(ids, labels=ids).loss
    loss.backward()
breaks = sum(counters["graph_break"].values())
print(f"RESULT graph breaks {breaks}, graphs {counters['stats']['unique_graphs']}: {dict(counters['graph_break'])}")
raise SystemExit(1 if breaks else 0)
EOF
}

# A checkpoint to generate and serve with, whatever happens to the quickstart.
make_fallback_ckpt() {
    "$PY" - "$WORK/fallback" <<'EOF'
import sys
import torch
from minimind.checkpoint import save_model
from minimind.config import get_preset
from minimind.model import MiniMindLM
from minimind.tokenizer import load_tokenizer
torch.manual_seed(0)
save_model(MiniMindLM(get_preset("tiny")), sys.argv[1], tokenizer_dir=load_tokenizer().path)
EOF
}

part_quickstart() {
    local steps=(--pretrain-steps 300 --sft-steps 150 --posttrain-steps 20 --eval-limit 10)
    [ "$DRY" = 1 ] && steps=(--pretrain-steps 3 --sft-steps 2 --posttrain-steps 1 --eval-limit 0)
    "$PY" -m minimind quickstart --full --device "$DEV" --out "$WORK/qs" --force "${steps[@]}" </dev/null
    local rc=$?
    echo "RESULT quickstart --full exit $rc"
    return $rc
}

ckpt() {
    echo "$WORK/fallback"
}

part_generate() {
    local c p=(--prompt "Tell me about the sea." --max-new-tokens 32 --no-think)
    c=$(ckpt)
    echo "checkpoint: $c"
    "$PY" -m minimind generate --ckpt "$c" --device cpu --dtype float32 --temperature 0 "${p[@]}" >"$WORK/cpu.txt" || return 1
    "$PY" -m minimind generate --ckpt "$c" --device "$DEV" --dtype float32 --temperature 0 "${p[@]}" >"$WORK/dev.txt" || return 1
    "$PY" -m minimind generate --ckpt "$c" --device "$DEV" --temperature 0.7 --seed 1 "${p[@]}" >"$WORK/sampled.txt" || return 1
    echo "greedy cpu : $(head -c 200 "$WORK/cpu.txt")"
    echo "greedy $DEV: $(head -c 200 "$WORK/dev.txt")"
    echo "sampled $DEV: $(head -c 200 "$WORK/sampled.txt")"
    # fp32 on both, but CUDA may run fp32 matmuls in TF32: a late near-tie can flip one token, so
    # the check is a common prefix of at least 40 characters (or the whole text).
    "$PY" - "$WORK/cpu.txt" "$WORK/dev.txt" "$DEV" <<'EOF'
import os, sys
a, b = (open(p, encoding="utf-8").read() for p in sys.argv[1:3])
common = len(os.path.commonprefix([a, b]))
same = a == b
print(f"RESULT greedy {sys.argv[3]} vs cpu: {'identical' if same else f'first {common} of {len(a)} chars agree'}; "
      f"sampling on {sys.argv[3]} ran")
sys.exit(0 if same or common >= 40 else 1)
EOF
}

part_serve() {
    local c port=$((20000 + RANDOM % 20000)) pid rc=0 i
    c=$(ckpt)
    "$PY" -m minimind serve --ckpt "$c" --device "$DEV" --port "$port" >"$WORK/serve.log" 2>&1 &
    pid=$!
    for i in $(seq 1 60); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
        sleep 1
    done
    for i in 1 2; do  # the second request shows the worker survived the first (default temperature 1.0)
        if curl -sf -m 60 "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
            -d '{"messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}' >"$WORK/reply$i.json"; then
            echo "reply $i: $(head -c 300 "$WORK/reply$i.json")"
        else
            echo "request $i failed"
            rc=1
        fi
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    tail -n 20 "$WORK/serve.log"
    echo "RESULT serve on $DEV: $([ $rc = 0 ] && echo 'two sampled replies' || echo 'FAILED')"
    return $rc
}

part_bench_train() {
    if [ "$DRY" = 1 ]; then
        "$PY" -m minimind bench train --preset tiny --dtype fp32 --steps 1 --warmup 1 --batch-size 2 --seq-len 64 \
            --no-data-bench --device cpu || return 1
        echo "RESULT (dry) bench train plumbing ran on the CPU"
        return 0
    fi
    local rc=0 preset
    for preset in small base; do
        "$PY" -m minimind bench train --preset "$preset" --dtype bf16 --compile --steps 10 --warmup 3 \
            --no-data-bench --device cuda --json "$REPORT_DIR/bench_train_$preset.json" || rc=1
        [ -f "$REPORT_DIR/bench_train_$preset.json" ] && "$PY" - "$preset" "$REPORT_DIR/bench_train_$preset.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[2])):
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
    print(f"RESULT {sys.argv[1]} {r['mode']} {r['dtype']}: {r['tokens_per_s']:,.0f} tok/s, MFU {mfu}")
EOF
    done
    return $rc
}

part_bench_infer() {
    # --compile adds the compiled decode step (infer/static_decode.py), timed and checked against the
    # eager engine's greedy tokens: on a GPU it should cut the ~450 kernel launches per token.
    local a=(--preset small --device cuda --batch-sizes 1,16,64 --repeats 2) sizes=3
    # dry: the plumbing only (tiny model, CPU, no transformers): CPU speed says nothing about a GPU
    [ "$DRY" = 1 ] && a=(--preset tiny --device cpu --batch-sizes 1,2 --prompt-len 8 --new-tokens 4 --repeats 1 --no-hf) \
        && sizes=2
    "$PY" -m minimind bench infer "${a[@]}" --no-server --compile | tee "$WORK/bench_infer.txt"
    local rc=${PIPESTATUS[0]}
    echo "RESULT bench infer exit $rc (ours eager and compiled vs transformers above);" \
        "compiled greedy = eager at $(grep -c 'greedy tokens identical' "$WORK/bench_infer.txt")/$sizes batch sizes"
    return $rc
}

export PY WORK DEV DRY REPORT_DIR ROOT
export -f make_fallback_ckpt part_env part_cuda_tests part_attention part_syncs part_compile part_quickstart ckpt part_generate \
    part_serve part_bench_train part_bench_infer

# Most telling first; the quickstart last (generate and serve use a random `tiny` checkpoint,
# which shows device bugs as well as a trained one).
run_part env 30 part_env
timeout 60 bash -c make_fallback_ckpt >"$REPORT_DIR/fallback.log" 2>&1 || echo "warning: no fallback checkpoint (see fallback.log)"
run_part cuda-tests 130 part_cuda_tests
run_part attention 30 part_attention
run_part syncs 45 part_syncs
run_part compile 75 part_compile
run_part generate 40 part_generate
run_part serve 45 part_serve
run_part bench-train 110 part_bench_train
run_part bench-infer 120 part_bench_infer
run_part quickstart "$([ "$DRY" = 1 ] && echo 300 || echo 100)" part_quickstart  # a CPU is slow even at 3 steps

{
    echo "## Summary ($(($(date +%s) - START)) s)"
    echo
    echo '```'
    printf '%-12s %-8s %5s  %s\n' part status secs result
    printf '%s\n' "${SUMMARY[@]}"
    echo '```'
} | tee -a "$REPORT"
echo "report: $REPORT"
