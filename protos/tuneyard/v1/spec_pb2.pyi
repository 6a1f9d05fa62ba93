import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Component(_message.Message):
    __slots__ = ("name", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("epochs", "batch_size", "optimizer", "lr_scheduler", "augmentations", "label_smoothing", "precision", "seed", "grad_clip_norm", "grad_accumulation_steps", "ema_decay", "early_stop_patience", "deterministic", "data_pipeline")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATIONS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    GRAD_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    EMA_DECAY_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOP_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    DATA_PIPELINE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    optimizer: Component
    lr_scheduler: Component
    augmentations: _containers.RepeatedCompositeFieldContainer[Component]
    label_smoothing: float
    precision: str
    seed: int
    grad_clip_norm: float
    grad_accumulation_steps: int
    ema_decay: float
    early_stop_patience: int
    deterministic: bool
    data_pipeline: str
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., optimizer: _Optional[_Union[Component, _Mapping]] = ..., lr_scheduler: _Optional[_Union[Component, _Mapping]] = ..., augmentations: _Optional[_Iterable[_Union[Component, _Mapping]]] = ..., label_smoothing: _Optional[float] = ..., precision: _Optional[str] = ..., seed: _Optional[int] = ..., grad_clip_norm: _Optional[float] = ..., grad_accumulation_steps: _Optional[int] = ..., ema_decay: _Optional[float] = ..., early_stop_patience: _Optional[int] = ..., deterministic: _Optional[bool] = ..., data_pipeline: _Optional[str] = ...) -> None: ...

class IntRange(_message.Message):
    __slots__ = ("low", "high", "log", "step")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    low: int
    high: int
    log: bool
    step: int
    def __init__(self, low: _Optional[int] = ..., high: _Optional[int] = ..., log: _Optional[bool] = ..., step: _Optional[int] = ...) -> None: ...

class FloatRange(_message.Message):
    __slots__ = ("low", "high", "log")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    log: bool
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., log: _Optional[bool] = ...) -> None: ...

class Choice(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    def __init__(self, values: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("parent", "values")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    parent: str
    values: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    def __init__(self, parent: _Optional[str] = ..., values: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ...) -> None: ...

class Parameter(_message.Message):
    __slots__ = ("name", "int_range", "float_range", "choice", "condition")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT_RANGE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_RANGE_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    name: str
    int_range: IntRange
    float_range: FloatRange
    choice: Choice
    condition: Condition
    def __init__(self, name: _Optional[str] = ..., int_range: _Optional[_Union[IntRange, _Mapping]] = ..., float_range: _Optional[_Union[FloatRange, _Mapping]] = ..., choice: _Optional[_Union[Choice, _Mapping]] = ..., condition: _Optional[_Union[Condition, _Mapping]] = ...) -> None: ...

class Objective(_message.Message):
    __slots__ = ("metric", "mode")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[Objective.Mode]
        MAXIMIZE: _ClassVar[Objective.Mode]
        MINIMIZE: _ClassVar[Objective.Mode]
    MODE_UNSPECIFIED: Objective.Mode
    MAXIMIZE: Objective.Mode
    MINIMIZE: Objective.Mode
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    mode: Objective.Mode
    def __init__(self, metric: _Optional[str] = ..., mode: _Optional[_Union[Objective.Mode, str]] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("max_trials", "max_duration", "max_concurrent_trials", "max_failures", "trial_retries")
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_TRIALS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    TRIAL_RETRIES_FIELD_NUMBER: _ClassVar[int]
    max_trials: int
    max_duration: _duration_pb2.Duration
    max_concurrent_trials: int
    max_failures: int
    trial_retries: int
    def __init__(self, max_trials: _Optional[int] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_concurrent_trials: _Optional[int] = ..., max_failures: _Optional[int] = ..., trial_retries: _Optional[int] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("gpus_per_trial", "priority", "gpu_memory_gb", "fuse")
    GPUS_PER_TRIAL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_GB_FIELD_NUMBER: _ClassVar[int]
    FUSE_FIELD_NUMBER: _ClassVar[int]
    gpus_per_trial: float
    priority: float
    gpu_memory_gb: float
    fuse: int
    def __init__(self, gpus_per_trial: _Optional[float] = ..., priority: _Optional[float] = ..., gpu_memory_gb: _Optional[float] = ..., fuse: _Optional[int] = ...) -> None: ...

class StudySpec(_message.Message):
    __slots__ = ("name", "dataset", "model", "training", "search_space", "searcher", "early_stopping", "objective", "budget", "resources", "objectives", "trainable", "task", "external", "constraints", "initial_configs", "warm_start")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SPACE_FIELD_NUMBER: _ClassVar[int]
    SEARCHER_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CONFIGS_FIELD_NUMBER: _ClassVar[int]
    WARM_START_FIELD_NUMBER: _ClassVar[int]
    name: str
    dataset: Component
    model: Component
    training: TrainingConfig
    search_space: _containers.RepeatedCompositeFieldContainer[Parameter]
    searcher: Component
    early_stopping: Component
    objective: Objective
    budget: Budget
    resources: Resources
    objectives: _containers.RepeatedCompositeFieldContainer[Objective]
    trainable: Component
    task: Component
    external: ExternalEvaluation
    constraints: _containers.RepeatedCompositeFieldContainer[Constraint]
    initial_configs: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    warm_start: WarmStart
    def __init__(self, name: _Optional[str] = ..., dataset: _Optional[_Union[Component, _Mapping]] = ..., model: _Optional[_Union[Component, _Mapping]] = ..., training: _Optional[_Union[TrainingConfig, _Mapping]] = ..., search_space: _Optional[_Iterable[_Union[Parameter, _Mapping]]] = ..., searcher: _Optional[_Union[Component, _Mapping]] = ..., early_stopping: _Optional[_Union[Component, _Mapping]] = ..., objective: _Optional[_Union[Objective, _Mapping]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., objectives: _Optional[_Iterable[_Union[Objective, _Mapping]]] = ..., trainable: _Optional[_Union[Component, _Mapping]] = ..., task: _Optional[_Union[Component, _Mapping]] = ..., external: _Optional[_Union[ExternalEvaluation, _Mapping]] = ..., constraints: _Optional[_Iterable[_Union[Constraint, _Mapping]]] = ..., initial_configs: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., warm_start: _Optional[_Union[WarmStart, _Mapping]] = ...) -> None: ...

class ExternalEvaluation(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: _duration_pb2.Duration
    def __init__(self, lease: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Constraint(_message.Message):
    __slots__ = ("metric", "max", "min")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    metric: str
    max: float
    min: float
    def __init__(self, metric: _Optional[str] = ..., max: _Optional[float] = ..., min: _Optional[float] = ...) -> None: ...

class WarmStart(_message.Message):
    __slots__ = ("study_ids",)
    STUDY_IDS_FIELD_NUMBER: _ClassVar[int]
    study_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, study_ids: _Optional[_Iterable[str]] = ...) -> None: ...
