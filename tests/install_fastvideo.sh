#!/usr/bin/env bash
# FastVideo 0.2.1 into the project's venv for tests/test_fastvideo_roundtrip.py (marker `fastvideo`), without touching torch:
# every package --no-deps, under a constraint that pins the installed torch. Then: pytest -m fastvideo tests/test_fastvideo_roundtrip.py
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || { echo "no .venv: run 'bash launchers/setup_env.sh' first" >&2; exit 2; }
source .venv/bin/activate
c=$(mktemp)
python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$c"
# fastvideo's dataset modules import these at module level; its declared dependencies (a CUDA torch among them) are not installed
pip install -q --no-deps -c "$c" fastvideo==0.2.1 einops remote-pdb scipy torchdata cloudpickle imageio
python -c 'import importlib.util, torch; assert importlib.util.find_spec("fastvideo"); print("fastvideo installed; torch", torch.__version__, "(unchanged)")'
rm -f "$c"
