"""Generated gRPC stubs for skyinfer.v1 (do not edit; run `python -m skyinfer.protos`)."""
