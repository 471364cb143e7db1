"""Which container images the pod runner runs, and with what local environment (pure).

No image can be pulled here, so the runner maps each image it owns to a local stand-in: a virtualenv plays
the image, and the image's ENTRYPOINT and ENV come from this table. The table is small and explicit on
purpose: an image the runner owns but does not know is refused (ErrImagePull), never run with a guess.

The server image's stand-in is `.venv/server-image` (made by hack/setup-python.sh): the repository's
environment plus what server/Dockerfile adds to vLLM's, the `s3` extra (boto3, with the python-dateutil 2.x
botocore needs shadowing the development tools' 4.x), so that grok-server pods and grok-fetch Jobs run with
what the real image has. The router image's is `.venv/router-image`: the dependency environment plus the
router's own distributions (grok-common, grok-rpc, grok-router) and no grok-server, as router/Dockerfile
installs them.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# hack/setup-python.sh makes them inside the repository's .venv (the environment the runner itself runs in).
SERVER_IMAGE_ENV = Path(sys.prefix) / "server-image"
ROUTER_IMAGE_ENV = Path(sys.prefix) / "router-image"

# The images of this project's serving pods, whatever the registry or tag: the runner owns their pods, KWOK
# simulates the others (the chart's operator pods included: the tests run the operator as a local process).
# Every image of ours but the operator's, so that one the table lacks is refused rather than faked. (Two plain
# patterns, no look-ahead: KWOK evaluates them with Go's regexp, which has none.)
OWNED_IMAGE_RE = r"(^|/)grok-serve/[a-z0-9][a-z0-9._-]*([:@]|$)"
SIMULATED_IMAGE_RE = r"(^|/)grok-serve/operator([:@]|$)"


@dataclass(frozen=True)
class LocalImage:
    """What runs for an image: its ENTRYPOINT (resolved in `bin_dir`) and its ENV, as its Dockerfile says."""

    name: str
    entrypoint: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    bin_dir: Path = Path(sys.executable).parent
    # Flags through which the image's processes are told which address to listen on: each must be given an
    # address of the pod's own (a pod's "all interfaces" would be every interface of this machine).
    listen_flags: tuple[str, ...] = ()


_SERVER = LocalImage(
    name="grok-serve/server",
    entrypoint=("grok-server",),
    env={
        "PYTHONUNBUFFERED": "1",
        # Simulation: every pod shares this machine's cores (no CPU set per pod, as a node's CPU manager
        # would give). vLLM's CPU backend would pin each engine's worker to the same first core, where they
        # starve one another; unpinned, the scheduler shares the cores out.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    },
    bin_dir=SERVER_IMAGE_ENV / "bin",
    listen_flags=("--host", "--metrics-host"),
)

_ROUTER = LocalImage(
    name="grok-serve/router",
    entrypoint=("grok-router",),
    env={"PYTHONUNBUFFERED": "1"},
    bin_dir=ROUTER_IMAGE_ENV / "bin",
    listen_flags=("--host",),
)

# (pattern on the image reference, local image). Patterns are matched against the whole reference.
TABLE: tuple[tuple[str, LocalImage], ...] = (
    (r"(.+/)?grok-serve/server(:[\w.-]+)?(@sha256:[0-9a-f]+)?", _SERVER),
    (r"(.+/)?grok-serve/router(:[\w.-]+)?(@sha256:[0-9a-f]+)?", _ROUTER),
)


def owned(image: str) -> bool:
    """Whether the runner (rather than KWOK's status-only simulation) is responsible for this image."""
    return re.search(OWNED_IMAGE_RE, image) is not None and re.search(SIMULATED_IMAGE_RE, image) is None


def resolve(image: str) -> LocalImage | None:
    for pattern, local in TABLE:
        if re.fullmatch(pattern, image):
            return local
    return None


def kwok_exclusion_key() -> str:
    """A KWOK stage selector key (a jq program) that is true for pods with any container the runner owns."""
    return (f'[(.spec.containers[]?, .spec.initContainers[]?) | .image '
            f'| test("{OWNED_IMAGE_RE}") and (test("{SIMULATED_IMAGE_RE}") | not)] | any')
