"""Generated protobuf and gRPC modules for the protos under ``protos/``.

Do not edit: produced by ``scripts/gen_protos.py``; a test fails when it drifts.
"""
