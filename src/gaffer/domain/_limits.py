"""Every input has a limit; these are the defaults, overridable by the server's config."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 16 * MiB
    max_spec_bytes: int = 8 * MiB
    max_argv_entries: int = 4096
    max_argv_bytes: int = 256 * KiB
    max_env_entries: int = 1024
    max_env_bytes: int = 256 * KiB
    max_stdin_bytes: int = 1 * MiB
    max_labels: int = 64
    max_label_key_chars: int = 63
    max_label_value_chars: int = 256
    max_queue_chars: int = 63
    max_priority: int = 1000
    max_timeout_seconds: int = 7 * 24 * 3600
    max_attempts: int = 100
    max_backoff_seconds: int = 24 * 3600
    max_inputs: int = 256
    max_inputs_bytes: int = 4 * MiB
    max_outputs: int = 64
    max_path_chars: int = 1024
    max_request_id_chars: int = 128
    max_id_chars: int = 128
    max_log_chunk_bytes: int = 1 * MiB
    max_artifact_chunk_bytes: int = 1 * MiB
    max_artifact_bytes: int = 4 * 1024 * MiB
    default_page_size: int = 50
    max_page_size: int = 1000
    max_reason_chars: int = 1024
    max_claim_jobs: int = 256
    max_submit_jobs: int = 1000
    # A job every agent rejects fails after this many rejections instead of cycling forever.
    max_rejections: int = 20
