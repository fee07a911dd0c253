"""`gaffer server` tunes the garbage collector of its process once it listens."""

from __future__ import annotations

import gc

from gaffer.cli._server_cmds import _tune_gc


def test_what_lives_at_start_is_frozen_and_young_objects_are_collected_less_often() -> None:
    threshold = gc.get_threshold()
    try:
        _tune_gc()
        assert gc.get_freeze_count() > 10_000  # modules and descriptors, never walked again
        assert gc.get_threshold() == (10_000, 10, 10)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
