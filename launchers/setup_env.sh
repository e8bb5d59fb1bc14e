#!/usr/bin/env bash
# Set-up shared by the README's two commands: a virtual environment in .venv with the pinned CPU torch and
# videorecipes installed (editable). Source it: `source launchers/setup_env.sh`; for an extra (dev, metrics):
# `VIDEORECIPES_EXTRA=dev source launchers/setup_env.sh` (positional arguments are not read: a sourced file sees
# its caller's arguments, and a launcher's own flags must not become an install extra).
# Idempotent: a stamp keyed on pyproject.toml skips the installs when nothing changed.
#   TORCH_SPEC   torch requirement installed first and kept as a constraint (default torch==2.13.0, the CPU
#                wheel on this project's machines; on a GPU machine use the CUDA build you want)
#   VIDEORECIPES_VENV   where the environment lives (default: <repo>/.venv)
_vr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_vr_venv=${VIDEORECIPES_VENV:-$_vr_root/.venv}
_vr_torch=${TORCH_SPEC:-torch==2.13.0}
_vr_extra=${VIDEORECIPES_EXTRA:-}
if [ ! -x "$_vr_venv/bin/python" ]; then
  echo "[setup] creating $_vr_venv"
  python3 -m venv "$_vr_venv" || return 1 2>/dev/null || exit 1
fi
_vr_hash=$( (cat "$_vr_root/pyproject.toml"; echo "$_vr_torch") | sha1sum | cut -c1-12)
_vr_stamp="$_vr_venv/.installed-$_vr_hash-${_vr_extra:-core}"
# Installed already? The stamp of this extra, or, when no extra is asked for, the stamp of any extra (each holds the core).
_vr_have() { [ -f "$_vr_stamp" ] || { [ -z "$_vr_extra" ] && compgen -G "$_vr_venv/.installed-$_vr_hash-*" >/dev/null; }; }
_vr_install() {
  echo "[setup] installing $_vr_torch and videorecipes${_vr_extra:+[$_vr_extra]} into $_vr_venv"
  "$_vr_venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip \
  && "$_vr_venv/bin/python" -m pip install -q --disable-pip-version-check "$_vr_torch" \
  && echo "$_vr_torch" > "$_vr_venv/constraints.txt" \
  && "$_vr_venv/bin/python" -m pip install -q --disable-pip-version-check -c "$_vr_venv/constraints.txt" \
       -e "$_vr_root${_vr_extra:+[$_vr_extra]}" \
  && touch "$_vr_stamp"
}
# Scripts that start side by side (the example twins in the tests) install one at a time: the lock is held while pip
# runs, and whoever waited finds the stamp and installs nothing.
if ! _vr_have; then
  { if command -v flock >/dev/null; then flock 9; fi; _vr_have || _vr_install; } 9>"$_vr_venv/.install.lock" \
    || { echo "[setup] installation failed" >&2; return 1 2>/dev/null || exit 1; }
fi
export PATH="$_vr_venv/bin:$PATH"
export PYTHONUNBUFFERED=1
