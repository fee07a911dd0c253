"""The Gaffer agent: registers with a server, claims jobs, runs them and reports back.

The CLI builds an :class:`AgentConfig` from its flags and awaits :func:`run_agent`. Function
jobs call Python callables registered with :func:`function` (or a :class:`FunctionRegistry`
passed as ``AgentConfig.functions``); raise :class:`NotRetryable` from one to fail its job for
good.
"""

from gaffer.agent._agent import OnRegistered, run_agent
from gaffer.agent._config import AgentConfig, default_base_env
from gaffer.agent._errors import AgentError
from gaffer.agent._functions import (
    FunctionRegistry,
    NotRetryable,
    default_registry,
    function,
    load_function_modules,
    work_dir,
)

__all__ = [
    "AgentConfig",
    "AgentError",
    "FunctionRegistry",
    "NotRetryable",
    "OnRegistered",
    "default_base_env",
    "default_registry",
    "function",
    "load_function_modules",
    "run_agent",
    "work_dir",
]
