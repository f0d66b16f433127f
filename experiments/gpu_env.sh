# Sourced by the lease scripts (gpu_session.sh) from the repo root: the device image lacks diffusers,
# open_clip and friends, so the wheels carried in .whl go to /tmp/site, and the CLI becomes a file on PATH.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
# `timeout` runs programs, not shell functions: the CLI as a file on PATH (no entry point without an install)
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -c "from cones_cli.app import app; app()" "$@"\n' > /tmp/bin/cones && chmod +x /tmp/bin/cones
export PATH=/tmp/bin:$PATH
