#!/usr/bin/env bash
# The GPU check on a lent GPU machine, as one command (docs/gpu.md, "The GPU check"):
#
#   bash benchmarks/gpu_session.sh [gpu_check flags, e.g. --sizes=base]
#
# That machine has Python 3.12 with jax (CUDA), flax, optax, orbax, sentencepiece and torch, no
# network, and no ml_collections: its wheel travels in .whl/ (git-ignored; name it in `carry`),
# downloaded beforehand on a machine with pip:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections==1.1.0
#
# It writes into $OUT when set (the folder that comes back from such a machine), else
# benchmarks/results/: the report JSON, named for the GPU found and rewritten after each section
# (a run cut short keeps what it measured), and gpu_session.log. PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-session-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu-session-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
  "$python" -c "import jax, flax, optax, ml_collections; print('jax', jax.__version__, \
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)"
} 2>&1 | tee "$out/gpu_session.log"
"$python" -m benchmarks.gpu_check --out "$out" "$@" 2>&1 | tee -a "$out/gpu_session.log"
