#!/usr/bin/env bash
# pyDVL compatibility check, in its own virtual environment, built with the README's recipe
# ("Using pyDVL side by side") command for command.
#
# pyDVL 0.10.0 pins numpy<2, so it cannot live in the main environment (numpy 2). This script
# creates (idempotently) a venv at .venv-pydvl in the repository root and runs there, from the
# repository root, exactly the README's two commands:
#     pip install torch==2.13.0
#     pip install "numpy<2" "pyDeprecate<0.4" "pydvl[influence]==0.10.0" -e ".[torch]"
# under a constraints file that pins torch==2.13.0 (the local CPU wheel; pip never pulls another,
# multi-GB CUDA build), then pytest and hypothesis for the checks, and runs every
# tests/pydvl_compat/check_*.py there. The main suite never collects those files (their names do
# not match test_*.py).
#
# Usage: bash .ci/pydvl_env.sh [extra pytest args]
# Environment: PYTHON (interpreter for the venv, default python3.11 or python3),
#              PYDVL_VENV (venv path, default <repo>/.venv-pydvl).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PYDVL_VENV:-$ROOT/.venv-pydvl}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.infl_array_ready"

# torch: the local CPU wheel, never another build, for every install below.
CONSTRAINTS=("torch==2.13.0")
# The README's recipe, after torch: numpy<2 makes the resolver pick zarr 3.1.5 (zarr 3.1.6 needs
# numpy>=2); the influence extra brings dask and distributed; pyDeprecate>=0.12 (newer than
# pyDVL 0.10) warns with FutureWarnings when pyDVL is imported.
RECIPE=("numpy<2" "pyDeprecate<0.4" "pydvl[influence]==0.10.0" -e ".[torch]")
TOOLS=(pytest hypothesis)

# When any of this or the project's metadata changes, the installs are redone.
want_stamp="$({ declare -p CONSTRAINTS RECIPE TOOLS; cat "$ROOT/pyproject.toml"; } \
    | sha256sum | cut -d' ' -f1)"

cd "$ROOT"
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
    step() { local s=$SECONDS; pip_install "$@"; echo "pydvl_env:   pip install $* ($((SECONDS - s)) s)"; }
    # the README's recipe, command for command
    step "torch==2.13.0"
    step "${RECIPE[@]}"
    # test tooling for the checks (not part of the recipe)
    step "${TOOLS[@]}"
    "$VPY" - <<'PYEOF'
import numpy, torch
import zarr, distributed, pydvl.influence.torch  # what the recipe promises
assert numpy.__version__.startswith("1."), numpy.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
PYEOF
    echo "$want_stamp" > "$STAMP"
fi
t1=$(date +%s)
echo "pydvl_env: environment ready in $((t1 - t0)) s"

"$VENV/bin/python" -c "import numpy, torch, pydvl, zarr, infl_array; print('pydvl_env: numpy', numpy.__version__, '| torch', torch.__version__, '| pydvl', pydvl.__version__, '| zarr', zarr.__version__)"

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
"$VENV/bin/python" -m pytest \
    tests/arrays/test_array.py tests/arrays/test_indexing.py tests/arrays/test_reduce.py \
    -q -p no:cacheprovider || rc=$?
echo "pydvl_env: numpy 1.x core tests ran in $(( $(date +%s) - t2 )) s"
exit "$rc"
