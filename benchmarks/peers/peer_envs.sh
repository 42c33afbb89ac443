#!/usr/bin/env bash
# Virtual environments of the peer libraries the benchmarks compare against, one per peer.
#
#   bash benchmarks/peers/peer_envs.sh kronfluence   # <repo>/.venv-kronfluence: kronfluence==1.0.1
#   bash benchmarks/peers/peer_envs.sh trak          # <repo>/.venv-trak: traker==0.3.2
#   bash benchmarks/peers/peer_envs.sh bergson       # <repo>/.venv-bergson: bergson (+ faiss-cpu)
#   bash benchmarks/peers/peer_envs.sh kronfluence-lm  # <repo>/.venv-kronfluence-lm: the same
#                                                    # kronfluence + transformers (benchmarks/lm)
#   bash benchmarks/peers/peer_envs.sh dattri        # <repo>/.venv-dattri: dattri (+ transformers)
#   bash benchmarks/peers/peer_envs.sh all           # every one (pyDVL has its own: bash .ci/pydvl_env.sh)
#
# Each venv gets torch==2.13.0 FIRST (the local CPU wheel) and a constraints file that pins it
# for every later install, so pip never resolves another, multi-GB CUDA build; then the peer
# with its dependencies, plus numpy and scipy (the benchmark scripts that run there use them).
# Idempotent: a stamp in the venv records what was installed; a second call with nothing changed
# only checks the imports. Prints one line per step with its duration.
#
# REMOVE (set by a peer's function): packages uninstalled after the peer's install.
# Environment: PYTHON (interpreter for the venvs, default python3.11 or python3),
#              PEER_VENV_DIR (where the venvs go, default the repository root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${PEER_VENV_DIR:-$ROOT}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

usage() {
    echo "usage: bash benchmarks/peers/peer_envs.sh kronfluence|kronfluence-lm|trak|bergson|dattri|all" >&2
    exit 2
}

# build NAME IMPORT_CHECK PACKAGE...
build() {
    local name="$1" check="$2"
    shift 2
    local venv="$DIR/.venv-$name"
    local stamp="$venv/.infl_array_peer_ready"
    local constraints=("torch==2.13.0")
    local want
    want="$({ declare -p constraints; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
        && "$venv/bin/python" -c "$check" 2>/dev/null; then
        echo "peer_envs: reusing $venv"
        return 0
    fi
    echo "peer_envs: building $venv with $PY"
    [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
    local vpy="$venv/bin/python" cons="$venv/constraints.txt"
    printf '%s\n' "${constraints[@]}" > "$cons"
    pip_install() {
        # pip's notes about this machine's empty local indexes are noise; errors still show
        "$vpy" -m pip install --disable-pip-version-check -q -c "$cons" "$@" 2>&1 \
            | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    }
    step() {
        local s=$SECONDS
        pip_install "$@"
        echo "peer_envs:   $name: $* ($((SECONDS - s)) s)"
    }
    step "torch==2.13.0"
    step "$@"
    if [[ -n "${REMOVE:-}" ]]; then
        # PyPI's torchvision/torchaudio are built against CUDA torch: with the CPU torch they
        # fail to load, and transformers imports torchvision whenever it is installed
        "$vpy" -m pip uninstall -y -q $REMOVE
        echo "peer_envs:   $name: removed $REMOVE"
    fi
    "$vpy" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    "$vpy" -c "$check"
    echo "$want" > "$stamp"
    "$vpy" -c "$check; import torch, numpy; print('peer_envs: $name ready: torch', \
torch.__version__, '| numpy', numpy.__version__)"
}

kronfluence() {
    build kronfluence "import kronfluence, scipy" "kronfluence==1.0.1" numpy scipy
}

trak() {
    # traker's CPU path (BasicProjector) needs no fast_jl (a CUDA extension); leave it out.
    build trak "import trak, scipy" "traker==0.3.2" numpy scipy
}

bergson() {
    # the language-model benchmark (benchmarks/lm) loads a transformers model there
    REMOVE="torchvision torchaudio" build bergson "import bergson, faiss; from transformers import GPT2LMHeadModel" bergson faiss-cpu transformers numpy scipy
}

kronfluence_lm() {
    REMOVE="torchvision torchaudio" build kronfluence-lm "import kronfluence, scipy; from transformers import GPT2LMHeadModel" "kronfluence==1.0.1" \
        transformers numpy scipy
}

dattri() {
    REMOVE="torchvision torchaudio" build dattri "import dattri; from transformers import GPT2LMHeadModel" dattri transformers numpy scipy
}

[[ $# -eq 1 ]] || usage
case "$1" in
    kronfluence) kronfluence ;;
    trak) trak ;;
    bergson) bergson ;;
    kronfluence-lm) kronfluence_lm ;;
    dattri) dattri ;;
    all) kronfluence && trak && bergson && dattri && kronfluence_lm ;;
    *) usage ;;
esac
