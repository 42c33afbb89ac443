#!/usr/bin/env bash
# pyDVL compatibility check, in its own virtual environment.
#
# pyDVL 0.10.0 pins numpy<2, so it cannot live in the main environment (numpy 2). This script
# creates (idempotently) a venv at .venv-pydvl in the repository root, installs torch==2.13.0
# FIRST (the local CPU wheel; a constraints file pins it for every later install so that pip
# never pulls another, multi-GB CUDA build), then numpy<2, pyDVL 0.10.0 with what its influence
# module needs, this project (editable, with its dependencies) and pytest, and runs
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

# What is installed. torch: the local CPU wheel, never another build. pyDeprecate>=0.12 (newer
# than pyDVL 0.10) warns with a FutureWarning when pyDVL is imported; 0.3.x is pyDVL 0.10's era.
CONSTRAINTS=("torch==2.13.0" "numpy<2" "pyDeprecate<0.4")
# pyDVL 0.10's own requirements and its influence extra, less cvxpy and matplotlib (only
# pydvl.value and plotting use them; pydvl.influence imports neither).
PYDVL_DEPS=("more-itertools>=9.0.0" "pandas>=1.3" "scikit-learn>=1.3" "scipy>=1.7.0"
    "joblib>=1.4.0" cloudpickle psutil tqdm typing-extensions "numcodecs<0.16.0"
    "pyDeprecate>=0.3.2" "dask>=2023.5.0" "distributed>=2023.5.0" "zarr>=3,<4")
PYDVL="pydvl==0.10.0"

# When any of this or the project's metadata changes, the installs are redone.
want_stamp="$({ declare -p CONSTRAINTS PYDVL_DEPS PYDVL; cat "$ROOT/pyproject.toml"; } \
    | sha256sum | cut -d' ' -f1)"

t0=$(date +%s)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] \
    && "$VENV/bin/python" -c "import torch, numpy, pydvl, pytest, hypothesis" 2>/dev/null; then
    echo "pydvl_env: reusing $VENV"
else
    echo "pydvl_env: building $VENV with $PY"
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    VPY="$VENV/bin/python"
    cons="$VENV/constraints.txt"
    printf '%s\n' "${CONSTRAINTS[@]}" > "$cons"
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
    # pyDVL's requirements (see PYDVL_DEPS), then pyDVL itself without dependencies.
    step "${PYDVL_DEPS[@]}"
    step --no-deps "$PYDVL"
    step -e "$ROOT" pytest hypothesis
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
rc=0
# every tests/pydvl_compat/check_*.py (the main suite collects only test_*.py)
PYDVL_COMPAT_REPORT="$report" "$VENV/bin/python" -m pytest tests/pydvl_compat \
    -o 'python_files=check_*.py' -q -p no:cacheprovider "$@" || rc=$?
t2=$(date +%s)
if [[ -f "$report" ]]; then
    echo "pydvl_env: max relative differences: $(tr -d '\n' < "$report")"
fi
echo "pydvl_env: tests ran in $((t2 - t1)) s"
# the core array tests under numpy 1.26 and the zarr it resolves (3.1.5): numpy>=1.26 support
"$VENV/bin/python" -m pytest tests/test_array.py tests/test_indexing.py tests/test_reduce.py \
    -q -p no:cacheprovider || rc=$?
echo "pydvl_env: numpy 1.x core tests ran in $(( $(date +%s) - t2 )) s"
exit "$rc"
