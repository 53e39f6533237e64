"""Generated gRPC stubs for vae.v1 (and the KServe v2 protocol); regenerate with
`python scripts/gen_protos.py`."""
