#!/usr/bin/env bash
# pyDVL compatibility check, in its own virtual environment.
#
# pyDVL 0.10.0 pins numpy<2, so it cannot live in the main environment (numpy 2). This script
# creates (idempotently) a venv at .venv-pydvl in the repository root, installs torch==2.13.0
# FIRST (the local CPU wheel; a constraints file pins it for every later install so that pip
# never pulls another, multi-GB CUDA build), then numpy<2, pyDVL 0.10.0 with its influence
# extra, this project (editable, with its dependencies) and pytest, and runs
# tests/pydvl_compat/check_pydvl.py there. The main suite never collects that file (its name
# does not match test_*.py).
#
# Usage: bash .ci/pydvl_env.sh [extra pytest args]
# Environment: PYTHON (interpreter for the venv, default python3.11 or python3),
#              PYDVL_VENV (venv path, default <repo>/.venv-pydvl).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PYDVL_VENV:-$ROOT/.venv-pydvl}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.infl_array_ready"

# Everything the environment depends on: when any of it changes, the installs are redone.
want_stamp="$(cat "$ROOT/.ci/pydvl_env.sh" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"

t0=$(date +%s)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] \
    && "$VENV/bin/python" -c "import torch, pydvl, infl_array, pytest" 2>/dev/null; then
    echo "pydvl_env: reusing $VENV"
else
    echo "pydvl_env: building $VENV with $PY"
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    VPY="$VENV/bin/python"
    PIP=("$VPY" -m pip install --disable-pip-version-check -q)
    cons="$VENV/constraints.txt"
    printf 'torch==2.13.0\nnumpy<2\n' > "$cons"
    # 1. torch first, from the local CPU wheel.
    "${PIP[@]}" -c "$cons" "torch==2.13.0"
    # 2. numpy<2, then pyDVL and the project, all under the constraints (torch stays 2.13.0).
    "${PIP[@]}" -c "$cons" "numpy<2"
    "${PIP[@]}" -c "$cons" "pydvl[influence]==0.10.0"
    "${PIP[@]}" -c "$cons" -e "$ROOT" pytest
    "$VPY" - <<'PYEOF'
import numpy, torch
assert numpy.__version__.startswith("1."), numpy.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
PYEOF
    echo "$want_stamp" > "$STAMP"
fi
t1=$(date +%s)
echo "pydvl_env: environment ready in $((t1 - t0)) s"

"$VENV/bin/python" -c "import numpy, torch, pydvl, zarr, infl_array; print('pydvl_env: numpy', numpy.__version__, '| torch', torch.__version__, '| pydvl', pydvl.__version__, '| zarr', zarr.__version__)"

cd "$ROOT"
"$VENV/bin/python" -m pytest tests/pydvl_compat/check_pydvl.py -q -p no:cacheprovider "$@"
t2=$(date +%s)
echo "pydvl_env: tests ran in $((t2 - t1)) s"
