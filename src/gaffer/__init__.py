"""Gaffer: a job service with a gRPC contract.

The Python client is re-exported here: ``from gaffer import Client, SyncClient, JobState``.
"""

from gaffer.client import *  # noqa: F403 - the client's public names are Gaffer's
from gaffer.client import __all__ as __all__
