#!/usr/bin/env bash
# The whole test suite (README command 2; .ci/run calls it). Sets itself up, then:
#   1. checks that nbdev_export and nbdev_clean leave the tree unchanged (notebooks are the source of truth),
#   2. runs every notebook with nbdev_test (cells flagged `slow` included; `cuda`/`multigpu` cells skipped),
#   3. runs pytest on tests/ in two workers, a test file per worker at a time (its summary is the last line).
set -euo pipefail
cd "$(dirname "$0")/.."
VIDEORECIPES_EXTRA=dev source launchers/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # two notebook workers on two cores: one thread each
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$(mktemp -d)}
t0=$(date +%s)
snapshot() { find videorecipes nbs -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha1sum; }
before=$(snapshot)
nbdev_export
nbdev_clean
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "FAILED: nbdev_export / nbdev_clean changed files (edit the notebook, export, clean, commit both):"
  diff <(echo "$before") <(echo "$after") || true
  exit 1
fi
echo "[tests] nbdev_export and nbdev_clean leave the tree unchanged"
nbdev_test --n_workers 2 --flags slow --timing
echo "[tests] notebooks passed in $(( $(date +%s) - t0 ))s"
python -m pytest tests/ -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist loadfile
