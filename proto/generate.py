"""Regenerate ``netrun/proto/caffe_pb2.py`` from ``proto/caffe.proto``.

Run after any edit to the schema (from anywhere; paths are resolved relative
to the repository root)::

    python proto/generate.py

It runs exactly ``python -m grpc_tools.protoc -Iproto --python_out=netrun/proto
proto/caffe.proto`` from the repository root (needs the ``grpcio-tools``
package), and creates an empty ``netrun/proto/__init__.py`` if it is missing.
protoc's output refuses to import under a protobuf runtime older than the
protoc that wrote it.  The module only uses the descriptor builder API that
every protobuf since 3.20 has, so this script removes that version gate and
netrun works with whatever protobuf (>= 4.21) a user already has.
``tests/test_proto_sync.py`` fails whenever the committed module and the
.proto disagree.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
           "--python_out=netrun/proto", "proto/caffe.proto"]
    init = os.path.join(ROOT, "netrun", "proto", "__init__.py")
    if not os.path.exists(init):
        open(init, "w").close()
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"protoc failed (exit code {result.returncode}): {' '.join(cmd)}")
    out = os.path.join(ROOT, "netrun", "proto", "caffe_pb2.py")
    with open(out) as f:
        code = f.read()
    code = code.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
    code = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n", "", code)
    with open(out, "w") as f:
        f.write(code)
    print("wrote", os.path.join("netrun", "proto", "caffe_pb2.py"))


if __name__ == "__main__":
    main()
