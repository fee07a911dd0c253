"""Fault injection for Gaffer: real processes, SIGKILL and SIGSTOP, and the chaos run.

``python -m tests.chaos`` (or ``make chaos``) runs a long chaos run and prints its summary;
``tests/e2e/test_faults_chaos.py`` runs a bounded one in ``make test``.
"""
