#!/usr/bin/env bash
# Run THERE, on the device machine (tool `run`, carry [".whl", ".devdata"], timeout_s 540), after
# benchmarks/device/fetch.sh here. In at most 9 minutes: the machine, the evojax_mnist suite on CUDA
# in quick mode (200 generations), the CUDA tests (-m gpu), evojax_mnist in full (2000 generations;
# EvoJAX's 45.7 ms/generation is the number to beat) and the throughput suite (--quick). Results come
# back as 8 files: log.txt, quick/ and cuda/; commit them as benchmarks/results/<gpu>/ (quick/ as
# <gpu>-quick/). Locally, DEVICE=cpu QUICK=1 OUT=/tmp/x checks the script (the full run skipped).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:?set OUT}"; DEVICE="${DEVICE:-cuda}"; QUICK="${QUICK:-}"
mkdir -p "$OUT/cuda" "$OUT/quick"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg EVOENS_DATA_DIR="$PWD/.devdata"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD/benchmarks/device/ray_stub"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
python3 -c "import torch, evoens; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m evoens plugins | head -20
step() { local seconds=$1; shift; echo "== $* (at most ${seconds}s)"; local t0=$SECONDS
         timeout "$seconds" "$@"; echo "== rc $? in $((SECONDS - t0))s"; }
step 90 python3 -m evoens bench evojax_mnist --quick --device "$DEVICE" --out "$OUT/quick"
step 80 python3 -m pytest -m gpu -q -p no:cacheprovider -x
[ -n "$QUICK" ] || step 240 python3 -m evoens bench evojax_mnist --device "$DEVICE" --out "$OUT/cuda"
step 80 python3 -m evoens bench throughput --quick --device "$DEVICE" --out "$OUT/cuda"
ls -l "$OUT/quick"
ls -l "$OUT/cuda"
