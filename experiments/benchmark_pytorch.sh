#!/usr/bin/env bash
# The PyTorch stage-1 step (experiments/pytorch_stage1_step.py) timed on a config, in a
# venv of its own (.venv-torch): torch is never a dependency of the package.
#
#   bash experiments/benchmark_pytorch.sh configs/fashion_mnist.py 'cpu=True' [--steps=20]
#
# The config (file + ':args' string, as for mscad_jax.main) is resolved by the project's
# venv (.venv, or $PYTHON) into JSON, so both steps read the same settings. Extra pip
# arguments for torch go in $TORCH_PIP_ARGS (default: torch from PyPI; on a machine
# without a CUDA GPU, '--index-url https://download.pytorch.org/whl/cpu torch' is smaller).
set -euo pipefail
cd "$(dirname "$0")/.."
config_file=$1; config_arg=${2:-}; shift $(( $# >= 2 ? 2 : 1 ))
python=${PYTHON:-.venv/bin/python}
if [ ! -x .venv-torch/bin/python ]; then
  python3 -m venv .venv-torch
  .venv-torch/bin/pip install -q numpy ${TORCH_PIP_ARGS:-torch}
fi
json=$(mktemp --suffix=.json); trap 'rm -f "$json"' EXIT
channels=$("$python" - "$config_file" "$config_arg" "$json" <<'PY'
import sys
from mscad_jax import config as config_lib
config = config_lib.load_config_file(sys.argv[1], sys.argv[2] or None)
config_lib.validate(config)
open(sys.argv[3], "w").write(config.to_json())
print(config_lib.DATASETS[config.dataset][2])
PY
)
.venv-torch/bin/python experiments/pytorch_stage1_step.py --config_json="$json" --channels="$channels" "$@"
