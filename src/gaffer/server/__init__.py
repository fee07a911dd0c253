"""The Gaffer server: JobService and AgentService on grpc.aio, with health and reflection."""

from gaffer.server._app import RunningServer, run_server, start_server
from gaffer.server._config import ServerConfig

__all__ = ["RunningServer", "ServerConfig", "run_server", "start_server"]
