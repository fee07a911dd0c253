"""Gaffer: a job service with a gRPC contract."""
