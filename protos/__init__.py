"""Generated gRPC and protobuf modules for ssot-auth (do not edit; see scripts/gen_protos.py)."""
