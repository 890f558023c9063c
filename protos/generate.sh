#!/usr/bin/env sh
# Regenerate the committed protobuf/gRPC code next to the .proto files, so a
# clean install needs no generation step. Run: sh protos/generate.sh
# ($PYTHON defaults to the repo's .venv; it needs grpcio-tools, the dev extra).
set -eu
cd "$(dirname "$0")"
PYTHON="${PYTHON:-../.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. streamcell/v1/event.proto
"$PYTHON" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
  streamcell/v1/predictor.proto
