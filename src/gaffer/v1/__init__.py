"""Generated from protos/gaffer/v1 by `make proto`; do not edit."""
