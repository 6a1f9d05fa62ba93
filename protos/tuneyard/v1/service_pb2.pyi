import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tuneyard.v1 import spec_pb2 as _spec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StudyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STUDY_STATE_UNSPECIFIED: _ClassVar[StudyState]
    STUDY_PENDING: _ClassVar[StudyState]
    STUDY_RUNNING: _ClassVar[StudyState]
    STUDY_COMPLETED: _ClassVar[StudyState]
    STUDY_FAILED: _ClassVar[StudyState]
    STUDY_CANCELLED: _ClassVar[StudyState]

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_PENDING: _ClassVar[TrialState]
    TRIAL_RUNNING: _ClassVar[TrialState]
    TRIAL_COMPLETED: _ClassVar[TrialState]
    TRIAL_FAILED: _ClassVar[TrialState]
    TRIAL_PRUNED: _ClassVar[TrialState]
    TRIAL_CANCELLED: _ClassVar[TrialState]
    TRIAL_INFEASIBLE: _ClassVar[TrialState]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    CONTINUE: _ClassVar[Decision]
    STOP: _ClassVar[Decision]
STUDY_STATE_UNSPECIFIED: StudyState
STUDY_PENDING: StudyState
STUDY_RUNNING: StudyState
STUDY_COMPLETED: StudyState
STUDY_FAILED: StudyState
STUDY_CANCELLED: StudyState
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_PENDING: TrialState
TRIAL_RUNNING: TrialState
TRIAL_COMPLETED: TrialState
TRIAL_FAILED: TrialState
TRIAL_PRUNED: TrialState
TRIAL_CANCELLED: TrialState
TRIAL_INFEASIBLE: TrialState
DECISION_UNSPECIFIED: Decision
CONTINUE: Decision
STOP: Decision

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "values", "time")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    values: _containers.ScalarMap[str, float]
    time: _timestamp_pb2.Timestamp
    def __init__(self, epoch: _Optional[int] = ..., values: _Optional[_Mapping[str, float]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConfigChange(_message.Message):
    __slots__ = ("epoch", "source_trial_id", "config")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    source_trial_id: int
    config: _struct_pb2.Struct
    def __init__(self, epoch: _Optional[int] = ..., source_trial_id: _Optional[int] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("study_id", "trial_id", "state", "config", "device", "metrics", "final_metrics", "objective_value", "error", "checkpoint", "epochs_completed", "start_time", "end_time", "objective_values", "failure_reason", "exit_code", "exit_signal", "stderr_tail", "retries", "fused_group", "violated_constraints", "config_history")
    class FinalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_VALUE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_VALUES_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STDERR_TAIL_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FUSED_GROUP_FIELD_NUMBER: _ClassVar[int]
    VIOLATED_CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HISTORY_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    trial_id: int
    state: TrialState
    config: _struct_pb2.Struct
    device: str
    metrics: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    final_metrics: _containers.ScalarMap[str, float]
    objective_value: float
    error: str
    checkpoint: str
    epochs_completed: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    objective_values: _containers.RepeatedScalarFieldContainer[float]
    failure_reason: str
    exit_code: int
    exit_signal: str
    stderr_tail: str
    retries: int
    fused_group: str
    violated_constraints: _containers.RepeatedScalarFieldContainer[str]
    config_history: _containers.RepeatedCompositeFieldContainer[ConfigChange]
    def __init__(self, study_id: _Optional[str] = ..., trial_id: _Optional[int] = ..., state: _Optional[_Union[TrialState, str]] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., device: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., final_metrics: _Optional[_Mapping[str, float]] = ..., objective_value: _Optional[float] = ..., error: _Optional[str] = ..., checkpoint: _Optional[str] = ..., epochs_completed: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., objective_values: _Optional[_Iterable[float]] = ..., failure_reason: _Optional[str] = ..., exit_code: _Optional[int] = ..., exit_signal: _Optional[str] = ..., stderr_tail: _Optional[str] = ..., retries: _Optional[int] = ..., fused_group: _Optional[str] = ..., violated_constraints: _Optional[_Iterable[str]] = ..., config_history: _Optional[_Iterable[_Union[ConfigChange, _Mapping]]] = ...) -> None: ...

class TrialCounts(_message.Message):
    __slots__ = ("pending", "running", "completed", "failed", "pruned", "cancelled", "infeasible")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    INFEASIBLE_FIELD_NUMBER: _ClassVar[int]
    pending: int
    running: int
    completed: int
    failed: int
    pruned: int
    cancelled: int
    infeasible: int
    def __init__(self, pending: _Optional[int] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., pruned: _Optional[int] = ..., cancelled: _Optional[int] = ..., infeasible: _Optional[int] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("study_id", "spec", "state", "trial_counts", "best_trial", "test_metrics", "error", "request_id", "create_time", "start_time", "end_time", "epochs_spent", "pareto_front")
    class TestMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRIAL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    TEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_SPENT_FIELD_NUMBER: _ClassVar[int]
    PARETO_FRONT_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    spec: _spec_pb2.StudySpec
    state: StudyState
    trial_counts: TrialCounts
    best_trial: Trial
    test_metrics: _containers.ScalarMap[str, float]
    error: str
    request_id: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    epochs_spent: int
    pareto_front: _containers.RepeatedCompositeFieldContainer[Trial]
    def __init__(self, study_id: _Optional[str] = ..., spec: _Optional[_Union[_spec_pb2.StudySpec, _Mapping]] = ..., state: _Optional[_Union[StudyState, str]] = ..., trial_counts: _Optional[_Union[TrialCounts, _Mapping]] = ..., best_trial: _Optional[_Union[Trial, _Mapping]] = ..., test_metrics: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ..., request_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epochs_spent: _Optional[int] = ..., pareto_front: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ...) -> None: ...

class CreateStudyRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: _spec_pb2.StudySpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[_spec_pb2.StudySpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetStudyRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: StudyState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[StudyState, str]] = ...) -> None: ...

class ListStudiesResponse(_message.Message):
    __slots__ = ("studies", "next_page_token")
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[Study]
    next_page_token: str
    def __init__(self, studies: _Optional[_Iterable[_Union[Study, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelStudyRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class WatchStudyRequest(_message.Message):
    __slots__ = ("study_id", "after_sequence")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    after_sequence: int
    def __init__(self, study_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class StudyStateChanged(_message.Message):
    __slots__ = ("state", "error", "test_metrics")
    class TestMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    state: StudyState
    error: str
    test_metrics: _containers.ScalarMap[str, float]
    def __init__(self, state: _Optional[_Union[StudyState, str]] = ..., error: _Optional[str] = ..., test_metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TrialStarted(_message.Message):
    __slots__ = ("trial",)
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    trial: Trial
    def __init__(self, trial: _Optional[_Union[Trial, _Mapping]] = ...) -> None: ...

class TrialProgress(_message.Message):
    __slots__ = ("trial_id", "epoch", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    trial_id: int
    epoch: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, trial_id: _Optional[int] = ..., epoch: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TrialFinished(_message.Message):
    __slots__ = ("trial",)
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    trial: Trial
    def __init__(self, trial: _Optional[_Union[Trial, _Mapping]] = ...) -> None: ...

class BestTrialChanged(_message.Message):
    __slots__ = ("trial",)
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    trial: Trial
    def __init__(self, trial: _Optional[_Union[Trial, _Mapping]] = ...) -> None: ...

class TrialExploited(_message.Message):
    __slots__ = ("trial_id", "change")
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    trial_id: int
    change: ConfigChange
    def __init__(self, trial_id: _Optional[int] = ..., change: _Optional[_Union[ConfigChange, _Mapping]] = ...) -> None: ...

class StudyEvent(_message.Message):
    __slots__ = ("sequence", "time", "study_id", "study_state", "trial_started", "trial_progress", "trial_finished", "best_trial_changed", "trial_exploited")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_STATE_FIELD_NUMBER: _ClassVar[int]
    TRIAL_STARTED_FIELD_NUMBER: _ClassVar[int]
    TRIAL_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FINISHED_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_CHANGED_FIELD_NUMBER: _ClassVar[int]
    TRIAL_EXPLOITED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    study_id: str
    study_state: StudyStateChanged
    trial_started: TrialStarted
    trial_progress: TrialProgress
    trial_finished: TrialFinished
    best_trial_changed: BestTrialChanged
    trial_exploited: TrialExploited
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., study_id: _Optional[str] = ..., study_state: _Optional[_Union[StudyStateChanged, _Mapping]] = ..., trial_started: _Optional[_Union[TrialStarted, _Mapping]] = ..., trial_progress: _Optional[_Union[TrialProgress, _Mapping]] = ..., trial_finished: _Optional[_Union[TrialFinished, _Mapping]] = ..., best_trial_changed: _Optional[_Union[BestTrialChanged, _Mapping]] = ..., trial_exploited: _Optional[_Union[TrialExploited, _Mapping]] = ...) -> None: ...

class ListTrialsRequest(_message.Message):
    __slots__ = ("study_id", "page_size", "page_token")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    page_size: int
    page_token: str
    def __init__(self, study_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrialsResponse(_message.Message):
    __slots__ = ("trials", "next_page_token")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    next_page_token: str
    def __init__(self, trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTrialRequest(_message.Message):
    __slots__ = ("study_id", "trial_id")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    trial_id: int
    def __init__(self, study_id: _Optional[str] = ..., trial_id: _Optional[int] = ...) -> None: ...

class ListPluginsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class PluginParameter(_message.Message):
    __slots__ = ("name", "type", "default", "required", "doc", "ge", "gt", "le", "lt")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    GE_FIELD_NUMBER: _ClassVar[int]
    GT_FIELD_NUMBER: _ClassVar[int]
    LE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default: _struct_pb2.Value
    required: bool
    doc: str
    ge: float
    gt: float
    le: float
    lt: float
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., required: _Optional[bool] = ..., doc: _Optional[str] = ..., ge: _Optional[float] = ..., gt: _Optional[float] = ..., le: _Optional[float] = ..., lt: _Optional[float] = ...) -> None: ...

class Plugin(_message.Message):
    __slots__ = ("kind", "name", "distribution", "version", "description", "parameters")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    distribution: str
    version: str
    description: str
    parameters: _containers.RepeatedCompositeFieldContainer[PluginParameter]
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., distribution: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[PluginParameter, _Mapping]]] = ...) -> None: ...

class PluginLoadError(_message.Message):
    __slots__ = ("source", "message")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    source: str
    message: str
    def __init__(self, source: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ListPluginsResponse(_message.Message):
    __slots__ = ("plugins", "load_errors")
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    LOAD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[Plugin]
    load_errors: _containers.RepeatedCompositeFieldContainer[PluginLoadError]
    def __init__(self, plugins: _Optional[_Iterable[_Union[Plugin, _Mapping]]] = ..., load_errors: _Optional[_Iterable[_Union[PluginLoadError, _Mapping]]] = ...) -> None: ...

class SuggestTrialsRequest(_message.Message):
    __slots__ = ("study_id", "count", "client_id", "completions")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    count: int
    client_id: str
    completions: _containers.RepeatedCompositeFieldContainer[CompleteTrialRequest]
    def __init__(self, study_id: _Optional[str] = ..., count: _Optional[int] = ..., client_id: _Optional[str] = ..., completions: _Optional[_Iterable[_Union[CompleteTrialRequest, _Mapping]]] = ...) -> None: ...

class SuggestTrialsResponse(_message.Message):
    __slots__ = ("trials", "study_done", "completed")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    STUDY_DONE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    study_done: bool
    completed: _containers.RepeatedCompositeFieldContainer[Trial]
    def __init__(self, trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., study_done: _Optional[bool] = ..., completed: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ...) -> None: ...

class ReportTrialRequest(_message.Message):
    __slots__ = ("study_id", "trial_id", "step", "metrics", "client_id")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    trial_id: int
    step: int
    metrics: _containers.ScalarMap[str, float]
    client_id: str
    def __init__(self, study_id: _Optional[str] = ..., trial_id: _Optional[int] = ..., step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., client_id: _Optional[str] = ...) -> None: ...

class ReportTrialResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ...) -> None: ...

class CompleteTrialRequest(_message.Message):
    __slots__ = ("study_id", "trial_id", "state", "metrics", "error", "client_id")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    trial_id: int
    state: TrialState
    metrics: _containers.ScalarMap[str, float]
    error: str
    client_id: str
    def __init__(self, study_id: _Optional[str] = ..., trial_id: _Optional[int] = ..., state: _Optional[_Union[TrialState, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Device(_message.Message):
    __slots__ = ("name", "kind", "slots_total", "slots_busy", "memory_bytes", "trials", "description", "share_in_use")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_BUSY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SHARE_IN_USE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    slots_total: int
    slots_busy: int
    memory_bytes: int
    trials: _containers.RepeatedScalarFieldContainer[str]
    description: str
    share_in_use: float
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., slots_total: _Optional[int] = ..., slots_busy: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., trials: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., share_in_use: _Optional[float] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "address", "alive", "cpus", "gpus", "memory_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    alive: bool
    cpus: float
    gpus: float
    memory_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., cpus: _Optional[float] = ..., gpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "executor", "devices", "nodes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    version: str
    executor: str
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, version: _Optional[str] = ..., executor: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class DownloadCheckpointRequest(_message.Message):
    __slots__ = ("study_id", "trial_id")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    trial_id: int
    def __init__(self, study_id: _Optional[str] = ..., trial_id: _Optional[int] = ...) -> None: ...

class CheckpointChunk(_message.Message):
    __slots__ = ("data", "size", "sha256", "trial_id", "path")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    sha256: str
    trial_id: int
    path: str
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., trial_id: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class DeleteStudyRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class DeleteStudyResponse(_message.Message):
    __slots__ = ("study_id", "trials", "bytes_removed")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BYTES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    trials: int
    bytes_removed: int
    def __init__(self, study_id: _Optional[str] = ..., trials: _Optional[int] = ..., bytes_removed: _Optional[int] = ...) -> None: ...

class ExtendStudyRequest(_message.Message):
    __slots__ = ("study_id", "add_trials", "add_duration")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    ADD_TRIALS_FIELD_NUMBER: _ClassVar[int]
    ADD_DURATION_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    add_trials: int
    add_duration: _duration_pb2.Duration
    def __init__(self, study_id: _Optional[str] = ..., add_trials: _Optional[int] = ..., add_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExtendStudyResponse(_message.Message):
    __slots__ = ("study", "after_sequence")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    study: Study
    after_sequence: int
    def __init__(self, study: _Optional[_Union[Study, _Mapping]] = ..., after_sequence: _Optional[int] = ...) -> None: ...
