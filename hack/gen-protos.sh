#!/usr/bin/env bash
# Generates the Python gRPC stubs from protos/ (package grok.serving.v1 -> Python package grok.serving.v1
# under rpc/src, shipped with the grok-rpc distribution that grok-server and grok-router share). Generated,
# never edited or committed; regenerated only when a .proto file is newer than the stubs.
set -euo pipefail
cd "$(dirname "$0")/.."
src=rpc/src
stamp=$src/grok/.generated
mapfile -t protos < <(find protos -name '*.proto' | sort)
[ ${#protos[@]} -gt 0 ] || exit 0
if [ -f "$stamp" ] && [ -z "$(find protos -name '*.proto' -newer "$stamp")" ]; then exit 0; fi
rm -rf "$src/grok" server/src/grok  # (server/src/grok: where checkouts before grok-rpc had them)
.venv/bin/python -m grpc_tools.protoc -Iprotos --python_out="$src" --pyi_out="$src" --grpc_python_out="$src" "${protos[@]}"
find "$src/grok" -type d -exec touch {}/__init__.py \;
touch "$stamp"
