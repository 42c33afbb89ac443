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
    && "$VENV/bin/python" -c "import torch, numpy, pydvl, pytest" 2>/dev/null; then
    echo "pydvl_env: reusing $VENV"
else
    echo "pydvl_env: building $VENV with $PY"
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    VPY="$VENV/bin/python"
    cons="$VENV/constraints.txt"
    # torch: the local CPU wheel, never another build. pyDeprecate>=0.12 (newer than pyDVL
    # 0.10) warns with a FutureWarning when pyDVL is imported; 0.3.x is pyDVL 0.10's own era.
    printf 'torch==2.13.0\nnumpy<2\npyDeprecate<0.4\n' > "$cons"
    pip_install() {
        # pip's notes about this machine's empty local indexes are noise; errors still show
        "$VPY" -m pip install --disable-pip-version-check -q -c "$cons" "$@" 2>&1 \
            | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    }
    step() { local s=$SECONDS; pip_install "$@"; echo "pydvl_env:   $* ($((SECONDS - s)) s)"; }
    # 1. torch first, from the local CPU wheel.
    step "torch==2.13.0"
    # 2. numpy<2, then pyDVL and the project, all under the constraints (torch stays 2.13.0).
    step "numpy<2"
    # pyDVL's own requirements, less cvxpy and matplotlib (only pydvl.value and plotting use
    # them; pydvl.influence imports neither), then pyDVL itself without dependencies.
    step "more-itertools>=9.0.0" "pandas>=1.3" "scikit-learn>=1.3" "scipy>=1.7.0" \
        "joblib>=1.4.0" cloudpickle psutil tqdm typing-extensions "numcodecs<0.16.0" \
        "pyDeprecate>=0.3.2" "dask>=2023.5.0" "distributed>=2023.5.0" "zarr>=3,<4"
    step --no-deps "pydvl==0.10.0"
    step -e "$ROOT" pytest
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
report="$VENV/compat_report.json"
rm -f "$report"
PYDVL_COMPAT_REPORT="$report" "$VENV/bin/python" -m pytest tests/pydvl_compat/check_pydvl.py \
    -q -p no:cacheprovider "$@"
t2=$(date +%s)
[[ -f "$report" ]] && echo "pydvl_env: max relative differences: $(tr -d '\n' < "$report")"
echo "pydvl_env: tests ran in $((t2 - t1)) s"
