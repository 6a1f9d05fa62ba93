"""Every cap the server puts on what one request, one client or all clients together may ask for.

Exceeding one is refused before anything is stored or started, and the server goes on serving:

| cap | value | refused with |
|---|---|---|
| request size (MAX_MESSAGE_BYTES, grpc's receive limit) | 4 MiB | RESOURCE_EXHAUSTED (from grpc) |
| a study's spec, serialized (MAX_SPEC_BYTES) | 2 MiB | INVALID_ARGUMENT |
| a ListStudies / ListTrials page (MAX_RESPONSE_BYTES) | 4 MiB less 64 KiB | a shorter page, `next_page_token` |
| JSON levels below `spec` (MAX_NESTING) | 32 | INVALID_ARGUMENT |
| search-space parameters (MAX_PARAMETERS) | 1,000 | INVALID_ARGUMENT |
| values of one choice, or of one condition (MAX_CHOICE_VALUES) | 1,000 | INVALID_ARGUMENT |
| `spec.name`, a parameter name, any object key (MAX_NAME_CHARS) | 200 characters | INVALID_ARGUMENT |
| any other string in a spec (MAX_STRING_CHARS) | 4,096 characters | INVALID_ARGUMENT |
| a path option (MAX_PATH_CHARS; one component: MAX_PATH_PART_BYTES) | 4,096 chars; 255 bytes | INVALID_ARGUMENT |
| `request_id`, `study_id` (MAX_ID_CHARS) | 64 characters | INVALID_ARGUMENT |
| `budget.max_trials` (MAX_TRIALS) | 100,000 | INVALID_ARGUMENT |
| smallest `resources.gpus_per_trial` share (MIN_GPU_SHARE) | 1/16 of a device | INVALID_ARGUMENT |
| largest `resources.gpus_per_trial` (MAX_GPUS_PER_TRIAL) | 64 devices | INVALID_ARGUMENT |
| `resources.gpu_memory_gb` (MAX_GPU_MEMORY_GB) | 4,096 GiB | INVALID_ARGUMENT |
| `resources.priority` (MAX_PRIORITY) | 10^6 | INVALID_ARGUMENT |
| unfinished studies on the server (`StudyManager(max_active_studies=)`) | 64 | RESOURCE_EXHAUSTED |
| open WatchStudy streams on the server (MAX_WATCHERS) | 200 | RESOURCE_EXHAUSTED |
| open WatchStudy streams of one client (MAX_WATCHERS_PER_CLIENT) | 128 | RESOURCE_EXHAUSTED |
| trials one SuggestTrials hands out (MAX_SUGGEST) | 100 | INVALID_ARGUMENT |
| metrics of one ReportTrial / CompleteTrial (MAX_METRICS) | 1,000 | INVALID_ARGUMENT |
| a CompleteTrial's `error` (MAX_ERROR_CHARS) | 65,536 characters | INVALID_ARGUMENT |
| DownloadCheckpoint streams open on the server (MAX_DOWNLOADS) | 16 | RESOURCE_EXHAUSTED |
| ExtendStudy's `add_trials`, with the trials a study has (MAX_TRIALS) | 100,000 | INVALID_ARGUMENT |

DownloadCheckpoint sends a file in chunks of CHECKPOINT_CHUNK_BYTES (1 MiB), well below every
client's 4 MiB receive limit.

A client is who `servicer.client_identity` says: its token's name when tokens are on, else the
peer's host. Modules read these names at call time (or, for the stream caps, when the servicer is
built), so a test may monkeypatch them lower in the module that uses them.
"""

from __future__ import annotations

from tuneyard.plugins.api import MAX_PATH_CHARS, MAX_PATH_PART_BYTES

__all__ = [
    "DEFAULT_MAX_ACTIVE_STUDIES",
    "MAX_CHOICE_VALUES",
    "MAX_GPU_MEMORY_GB",
    "MAX_GPUS_PER_TRIAL",
    "MAX_ID_CHARS",
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_NESTING",
    "MAX_PARAMETERS",
    "MAX_PATH_CHARS",
    "MAX_PATH_PART_BYTES",
    "MAX_PRIORITY",
    "MAX_RESPONSE_BYTES",
    "MAX_SPEC_BYTES",
    "MAX_STRING_CHARS",
    "MAX_TRIALS",
    "MAX_WATCHERS",
    "MAX_WATCHERS_PER_CLIENT",
    "MIN_GPU_SHARE",
    "MAX_SUGGEST",
    "MAX_METRICS",
    "MAX_ERROR_CHARS",
    "MAX_DOWNLOADS",
    "CHECKPOINT_CHUNK_BYTES",
]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # grpc's receive limit (server/app.py)
# Every client's default receive limit is 4 MiB too: a page holds what fits in that (at least one item),
# and a spec leaves room beside it in a Study for the best trial and the Pareto front.
MAX_RESPONSE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
MAX_SPEC_BYTES = 2 * 1024 * 1024
# Protobuf readers stop at 100 message levels and each Struct level costs two, so a deeper stored
# spec would break every client's ListStudies.
MAX_NESTING = 32
MAX_PARAMETERS = 1000
MAX_CHOICE_VALUES = 1000
MAX_NAME_CHARS = 200
MAX_STRING_CHARS = 4096
MAX_ID_CHARS = 64
MAX_TRIALS = 100_000
# Each packed trial is a worker process of its own (~0.8 GB with torch): 1/16 of a device is the
# smallest share, so at most 16 trials share one device (the pool enforces the same per device).
MIN_GPU_SHARE = 1 / 16
MAX_GPUS_PER_TRIAL = 64
MAX_GPU_MEMORY_GB = 4096.0
MAX_PRIORITY = 1e6
DEFAULT_MAX_ACTIVE_STUDIES = 64
MAX_WATCHERS = 200  # each open stream holds an RPC thread; kept below app.RPC_THREADS
MAX_DOWNLOADS = 16  # so do downloads: MAX_WATCHERS + MAX_DOWNLOADS stays below app.RPC_THREADS (256)
CHECKPOINT_CHUNK_BYTES = 1 << 20
MAX_WATCHERS_PER_CLIENT = 128
MAX_SUGGEST = 100
MAX_METRICS = 1000
MAX_ERROR_CHARS = 65_536  # a client's traceback
