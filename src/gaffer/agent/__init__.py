"""The Gaffer agent: registers with a server, claims jobs, runs them and reports back.

The CLI builds an :class:`AgentConfig` from its flags and awaits :func:`run_agent`.
"""

from gaffer.agent._agent import OnRegistered, run_agent
from gaffer.agent._config import AgentConfig, default_base_env
from gaffer.agent._errors import AgentError

__all__ = ["AgentConfig", "AgentError", "OnRegistered", "default_base_env", "run_agent"]
