#!/usr/bin/env bash
# Set up growclip_ds on a fresh machine: a venv in .venv with pinned packages, and DeepSpeed's
# shm_comm op built once (DeepSpeed JIT-compiles it at the first init_distributed, ~30-70 s; doing it
# here keeps that cost out of the first test or training run). Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages of the multi-node path (deepspeed --hostfile runs pdsh over ssh; the two-node
# test starts its own sshd): installed when missing and we may (root with apt-get).
if ! { command -v pdsh && command -v /usr/sbin/sshd; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server pdsh) >/dev/null
  else
    echo "setup: pdsh / openssh-server missing and not root: install them for the multi-node path and its test" >&2
  fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.growclip_setup
want=$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip wheel "setuptools>=61"
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-build-isolation deepspeed==0.19.8
.venv/bin/python -m pip install -q --no-build-isolation -e '.[test]'
# build DeepSpeed's CPU shared-memory comm op now (only where DeepSpeed runs on CPU)
if ! .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  # with the venv's bin first on PATH, as everywhere else (activated venv, launchers, tests): torch builds
  # with the first `ninja` on PATH, and the venv's and the system's ninja hash commands differently, so
  # a build by one is redone by the other
  PATH="$PWD/.venv/bin:$PATH" DS_ACCELERATOR=cpu .venv/bin/python -c "import growclip_ds  # its build folder: .venv/torch_extensions
from deepspeed.accelerator import get_accelerator
get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 || echo "setup: shm_comm op not built (DeepSpeed will try at first launch)"
fi
.venv/bin/python -m pip check
echo "$want" > "$stamp"
echo "setup: done ($(.venv/bin/python -c 'import torch,deepspeed;print("torch",torch.__version__,"deepspeed",deepspeed.__version__)' 2>/dev/null))"
