"""The one registry of reason codes: for each, its HTTP status, CLI exit code, ledger stage, and whether the
detail reelvec wrote may be shown to a client (else the client reads `generic`). Every error path reads it;
`tests/test_reasons.py` fails when a reason is raised anywhere but missing here.

Exit codes: 2 bad input or unknown item/version, 3 model unavailable, 4 index unavailable or locked,
5 a backfill's alias swap refused by the quality gate, 1 anything else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    status: int
    exit: int
    stage: str
    public: bool
    generic: str = "the request could not be completed; see the server log"


def _r(status: int, exit_code: int, stage: str, public: bool = True, generic: str = "") -> Reason:
    return Reason(status, exit_code, stage, public, generic or Reason.generic)


REASONS: dict[str, Reason] = {
    # the item as given: id, metadata, caption, media bytes
    "bad_item_id": _r(422, 2, "manifest"),
    "bad_metadata": _r(422, 2, "manifest"),
    "caption_too_long": _r(422, 2, "manifest"),
    "too_many_hashtags": _r(422, 2, "manifest"),
    "too_large": _r(413, 2, "decode"),
    "too_long": _r(422, 2, "decode"),
    "too_many_pixels": _r(422, 2, "decode"),
    "empty": _r(422, 2, "decode", False, "the uploaded file is empty"),
    "truncated": _r(422, 2, "decode", False, "the file is truncated or corrupt: no decodable video frames"),
    "not_a_video": _r(422, 2, "decode", False, "the file is not a video container reelvec can read"),
    "no_video_stream": _r(422, 2, "decode", False, "the file has no video stream"),
    "decode_timeout": _r(503, 3, "decode", False, "decoding took longer than decode.timeout_s; retry later"),
    "decode_worker_died": _r(503, 3, "decode", False, "the decoder stopped unexpectedly; retry later"),
    "nvdec_unavailable": _r(503, 3, "decode", False, "the GPU decoder is not available on this server"),
    "bad_frames": _r(422, 2, "decode", False, "the decoded frames are unusable"),
    "bad_audio": _r(422, 2, "decode", False, "the decoded audio is unusable"),
    "no_content": _r(422, 2, "fuse"),
    "not_found": _r(404, 2, "manifest"),
    "duplicate": _r(409, 2, "dedup"),
    # manifests and their rows
    "bad_manifest": _r(400, 2, "manifest"),
    "bad_row": _r(422, 2, "manifest"),
    "bad_uri": _r(422, 2, "manifest"),
    "forbidden_path": _r(422, 2, "manifest"),
    "duplicate_id": _r(422, 2, "manifest"),
    # requests
    "empty_query": _r(400, 2, "request"),
    "bad_query": _r(400, 2, "request"),
    "bad_version": _r(400, 2, "request"),
    "bad_alias": _r(400, 2, "request"),
    "bad_option": _r(400, 2, "request"),
    "unknown_item": _r(404, 2, "index"),
    "unknown_version": _r(404, 2, "index"),
    "unsupported_media_type": _r(415, 2, "request"),
    "missing_field": _r(422, 2, "request"),
    "missing_file": _r(422, 2, "request"),
    "bad_form": _r(422, 2, "request"),
    "unknown_parameter": _r(400, 2, "request"),
    "invalid_request": _r(400, 2, "request"),
    "body_timeout": _r(408, 2, "request"),
    "unauthorized": _r(401, 2, "request"),
    "forbidden": _r(403, 2, "request"),
    "method_not_allowed": _r(405, 2, "request"),
    "http_error": _r(400, 2, "request"),
    # the index
    "bad_payload": _r(422, 2, "index"),
    "missing_vector": _r(422, 2, "index"),
    "unknown_vector": _r(422, 2, "index"),
    "bad_vector": _r(422, 2, "index"),
    "schema_mismatch": _r(409, 4, "index"),
    "stale_schema": _r(409, 4, "index", False, "a newer embedding schema is stored for this item"),
    "rejected": _r(400, 4, "index", False, "the index refused the request"),
    "locked": _r(503, 4, "index", False, "the index is in use by another process; retry later"),
    "unreachable": _r(503, 4, "index", False, "the index is unreachable; retry later"),
    "write_conflict": _r(503, 4, "index", False, "a concurrent write conflicted; retry"),
    "write_failed": _r(503, 4, "write", False, "the index writer failed; retry later"),
    "engine_error": _r(500, 4, "index", False),
    "optimize_failed": _r(500, 4, "index", False),
    "closed": _r(503, 4, "index", False, "the index is closed; retry later"),
    "unwritable": _r(500, 4, "index", False),
    # models and configuration
    "missing": _r(503, 3, "model", False, "a model this request needs is not loaded"),
    "unknown_card": _r(500, 2, "model", False),
    "invalid_card": _r(500, 3, "model", False),
    "unsupported_source": _r(500, 3, "model", False),
    "download_failed": _r(503, 3, "model", False),
    "not_installed": _r(503, 3, "model", False, "a model this request needs is not installed"),
    "corrupt": _r(503, 3, "model", False, "a model's files are corrupt"),
    "invalid_batch_mode": _r(500, 2, "config", False),
    "invalid": _r(500, 2, "config", False),
    "invalid_dims": _r(500, 2, "config", False),
    "bad_yaml": _r(500, 2, "config", False),
    "bad_env": _r(500, 2, "config", False),
    "bad_graph": _r(500, 2, "config", False),
    "unsupported": _r(500, 2, "config", False),
    "no_eval_queries": _r(400, 2, "config"),
    "bad_eval_queries": _r(400, 2, "config"),
    "semantic_ids_missing": _r(409, 2, "index"),
    "semantic_ids_bad_input": _r(400, 2, "index"),
    "semantic_ids_corrupt": _r(500, 4, "index", False),
    "semantic_ids_stale": _r(409, 2, "index"),
    # the service and jobs
    "overloaded": _r(503, 1, "request", False, "the service is busy; retry later"),
    "internal_error": _r(500, 1, "job", False, "internal error; the server log has the details under this request id"),
    "insufficient_resources": _r(503, 2, "job"),
    "unsupported_address": _r(400, 2, "job"),
    "bad_address": _r(400, 2, "job"),
    "needs_cluster": _r(400, 2, "job"),
    "cluster_unreachable": _r(503, 2, "job"),
    "worker_import_error": _r(500, 2, "job", False),
    "job_environment": _r(500, 2, "job"),
    "port_in_use": _r(409, 2, "job"),
    "submit_failed": _r(503, 1, "job", False),
    "backfill_failed": _r(500, 1, "job", False),
    "gate_refused": _r(409, 5, "job"),
}


def reason(code: str) -> Reason:
    """The registered reason, or `internal_error`'s for an unregistered one (the registry test forbids that)."""
    return REASONS.get(code) or REASONS["internal_error"]
