"""Generated gRPC/protobuf stubs (do not edit; `make proto`)."""
