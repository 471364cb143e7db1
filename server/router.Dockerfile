# syntax=docker/dockerfile:1
# The grok-router image: the package grok_router (server/src/grok_router), installed with grok-server's
# distribution and its `router` extra (aiohttp, the Kubernetes client) and without the engine: no vLLM, no
# torch, so it is small and starts in seconds. Runs as uid 65532 on a read-only root filesystem.
#
# Build from the repository root (the build needs protos/, common/, server/ and requirements/):
#   docker build -f server/router.Dockerfile -t grok-serve/router:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/requirements/constraints.txt
WORKDIR /src
COPY requirements/ requirements/
COPY protos/ protos/
COPY common/ common/
COPY server/ server/
# Stubs are generated from protos/ (never copied from a checkout), then one virtual environment is made and
# copied whole into the runtime stage; byte-compiled here because the runtime filesystem is read-only.
RUN python -m venv /opt/grok-router \
 && /opt/grok-router/bin/pip install grpcio-tools protobuf \
 && rm -rf server/src/grok \
 && find protos -name '*.proto' -print0 | sort -z \
      | xargs -0 /opt/grok-router/bin/python -m grpc_tools.protoc -Iprotos \
          --python_out=server/src --pyi_out=server/src --grpc_python_out=server/src \
 && find server/src/grok -type d -exec touch {}/__init__.py \; \
 && /opt/grok-router/bin/pip uninstall --yes --quiet grpcio-tools \
 && /opt/grok-router/bin/pip install ./common "./server[router]" \
 && /opt/grok-router/bin/pip check \
 && ! /opt/grok-router/bin/python -c "import vllm" 2>/dev/null \
 && ! /opt/grok-router/bin/python -c "import torch" 2>/dev/null \
 && /opt/grok-router/bin/python -m compileall -q /opt/grok-router/lib \
 && /opt/grok-router/bin/grok-router --help > /dev/null \
 && /opt/grok-router/bin/python -m pip uninstall --yes --quiet pip

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="grok-router" \
      org.opencontainers.image.description="Load- and prefix-aware router for grok-server replicas (gRPC and OpenAI HTTP)" \
      org.opencontainers.image.source="https://github.com/grok-serve/grok-serve" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/grok-router /opt/grok-router
ENV PATH=/opt/grok-router/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
# gRPC (the GrokDeployment's server.grpcPort default) and HTTP (router.httpPort: OpenAI API, metrics, probes).
EXPOSE 50051 8080
ENTRYPOINT ["grok-router"]
