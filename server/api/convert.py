"""The one place that converts between protobuf messages and domain records."""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf import json_format, message, struct_pb2, timestamp_pb2

from tuneyard.plugins.api import LoadError, ParamSpec, PluginEntry
from tuneyard.server.study.domain import (
    EventRecord,
    InvalidArgument,
    StudyRecord,
    StudyState,
    TrialRecord,
    TrialState,
    trial_from_dict,
)
from tuneyard.v1 import service_pb2 as pb
from tuneyard.v1 import spec_pb2

log = logging.getLogger(__name__)
# MessageToDict raises SerializeToJsonError for a bad field, and ValueError for a bad well-known type at the top.
_NO_JSON_FORM = (json_format.SerializeToJsonError, ValueError)
# Their fields are not path parts in JSON: a Value is its content, a ListValue's items are `[i]`.
_JSON_VALUE_TYPES = ("google.protobuf.Value", "google.protobuf.ListValue")


def spec_to_dict(spec: spec_pb2.StudySpec) -> dict[str, Any]:
    """The proto3-JSON form with proto field names: what the validator and storage work on.

    Some wire values have no JSON form (NaN or infinity in a Struct, a Duration out of range);
    those are bad input, refused with the path of the field.
    """
    try:
        return json_format.MessageToDict(spec, preserving_proto_field_name=True)
    except _NO_JSON_FORM as exc:
        why = str(exc.__cause__ or exc)
        raise InvalidArgument(_unwritable_field(spec, "spec"), f"has no JSON form: {why}") from None


def _unwritable_field(msg: message.Message, path: str) -> str:
    """The deepest field under `msg` that proto3 JSON cannot express, as a JSON path (`options.a.b[1]`)."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        name = "" if msg.DESCRIPTOR.full_name in _JSON_VALUE_TYPES else f".{field.name}"
        if field.message_type.GetOptions().map_entry:
            children = [(f"{path}.{key}", item) for key, item in value.items()]
        elif field.is_repeated:
            children = [(f"{path}{name}[{i}]", item) for i, item in enumerate(value)]
        else:
            children = [(f"{path}{name}", value)]
        for child_path, child in children:
            if not isinstance(child, message.Message):
                continue
            try:
                json_format.MessageToDict(child)
            except _NO_JSON_FORM:
                return _unwritable_field(child, child_path)
    return path


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def spec_from_dict(spec: dict[str, Any]) -> spec_pb2.StudySpec:
    """A stored spec as a message. A part that no longer parses (stored by an older release that let a
    value past the wire's range through, such as a seed above int64) is left out and logged, so one
    study cannot break every listing."""
    spec = _drop_none(spec)
    try:
        return json_format.ParseDict(spec, spec_pb2.StudySpec(), ignore_unknown_fields=True)
    except json_format.ParseError:
        msg = spec_pb2.StudySpec()
        for key, value in spec.items():
            try:
                msg.MergeFrom(json_format.ParseDict({key: value}, spec_pb2.StudySpec(), ignore_unknown_fields=True))
            except json_format.ParseError as exc:
                log.warning("stored spec of study %r: %s does not parse, left out (%s)", spec.get("name"), key, exc)
        return msg


def study_state_to_proto(state: StudyState) -> pb.StudyState:
    return pb.StudyState.Value(f"STUDY_{state.value}")


def study_state_from_proto(value: int) -> StudyState | None:
    if value == pb.STUDY_STATE_UNSPECIFIED:
        return None
    return StudyState(pb.StudyState.Name(value).removeprefix("STUDY_"))


def trial_state_from_proto(value: int) -> TrialState | None:
    """The domain state of a proto TrialState; None for UNSPECIFIED or a number no state has."""
    if value == pb.TRIAL_STATE_UNSPECIFIED or value not in pb.TrialState.values():
        return None
    return TrialState(pb.TrialState.Name(value).removeprefix("TRIAL_"))


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def trial_to_proto(trial: TrialRecord) -> pb.Trial:
    msg = pb.Trial(
        study_id=trial.study_id,
        trial_id=trial.trial_id,
        state=pb.TrialState.Value(f"TRIAL_{trial.state.value}"),
        config=_struct(trial.config),
        device=trial.device,
        final_metrics=trial.final_metrics,
        error=trial.error,
        checkpoint=trial.checkpoint,
        epochs_completed=trial.epochs_completed,
        start_time=_timestamp(trial.start_time),
        end_time=_timestamp(trial.end_time),
        failure_reason=trial.failure_reason,
        exit_signal=trial.exit_signal,
        stderr_tail=trial.stderr_tail,
        retries=trial.retries,
        fused_group=trial.fused_group,
    )
    if trial.exit_code is not None:
        msg.exit_code = trial.exit_code
    if trial.objective_value is not None:
        msg.objective_value = trial.objective_value
    msg.objective_values.extend(trial.objective_values)
    msg.violated_constraints.extend(trial.violated_constraints)
    for change in trial.config_history:
        source, config = change.source_trial_id, _struct(change.config)
        msg.config_history.add(epoch=change.epoch, source_trial_id=source, config=config)
    for epoch in trial.metrics:
        msg.metrics.add(epoch=epoch.epoch, values=epoch.values, time=_timestamp(epoch.time))
    return msg


def study_to_proto(study: StudyRecord) -> pb.Study:
    c = study.counts
    msg = pb.Study(
        study_id=study.study_id,
        spec=spec_from_dict(study.spec),
        state=study_state_to_proto(study.state),
        trial_counts=pb.TrialCounts(
            pending=c.pending,
            running=c.running,
            completed=c.completed,
            failed=c.failed,
            pruned=c.pruned,
            cancelled=c.cancelled,
            infeasible=c.infeasible,
        ),
        test_metrics=study.test_metrics,
        error=study.error,
        request_id=study.request_id,
        create_time=_timestamp(study.create_time),
        start_time=_timestamp(study.start_time),
        end_time=_timestamp(study.end_time),
        epochs_spent=study.epochs_spent,
    )
    if study.best_trial is not None:
        msg.best_trial.CopyFrom(trial_to_proto(study.best_trial))
    msg.pareto_front.extend(trial_to_proto(t) for t in study.pareto_front)
    return msg


def event_to_proto(event: EventRecord) -> pb.StudyEvent:
    msg = pb.StudyEvent(sequence=event.sequence, time=_timestamp(event.time), study_id=event.study_id)
    p = event.payload
    if event.kind == "study_state":
        msg.study_state.CopyFrom(
            pb.StudyStateChanged(
                state=study_state_to_proto(StudyState(p["state"])),
                error=p.get("error", ""),
                test_metrics=p.get("test_metrics", {}),
            )
        )
    elif event.kind == "trial_started":
        msg.trial_started.trial.CopyFrom(trial_to_proto(trial_from_dict(p["trial"])))
    elif event.kind == "trial_progress":
        msg.trial_progress.CopyFrom(pb.TrialProgress(trial_id=p["trial_id"], epoch=p["epoch"], metrics=p["metrics"]))
    elif event.kind == "trial_exploited":
        change = pb.ConfigChange(epoch=p["epoch"], source_trial_id=p["source_trial_id"], config=_struct(p["config"]))
        msg.trial_exploited.CopyFrom(pb.TrialExploited(trial_id=p["trial_id"], change=change))
    elif event.kind == "trial_finished":
        msg.trial_finished.trial.CopyFrom(trial_to_proto(trial_from_dict(p["trial"])))
    elif event.kind == "best_trial_changed":
        msg.best_trial_changed.trial.CopyFrom(trial_to_proto(trial_from_dict(p["trial"])))
    else:
        raise ValueError(f"unknown event kind {event.kind!r}")
    return msg


def _value(value: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(value, out)
    return out


def plugin_to_proto(entry: PluginEntry) -> pb.Plugin:
    msg = pb.Plugin(
        kind=entry.kind,
        name=entry.name,
        distribution=entry.distribution,
        version=entry.version,
        description=entry.description,
    )
    for param in entry.parameters:
        p = msg.parameters.add(name=param.name, type=param.type, required=param.required, doc=param.doc)
        _bounds_to_proto(param, p)
        if not param.required:
            try:
                p.default.CopyFrom(_value(param.default))
            except (json_format.ParseError, TypeError, ValueError):
                p.default.CopyFrom(_value(repr(param.default)))
    return msg


def _bounds_to_proto(param: ParamSpec, msg: pb.PluginParameter) -> None:
    """Copy the declared limits; an undeclared one stays unset (proto3 optional), unlike a limit of 0."""
    if param.bounds is None:
        return
    for limit in ("ge", "gt", "le", "lt"):
        value = getattr(param.bounds, limit)
        if value is not None:
            setattr(msg, limit, float(value))


def load_error_to_proto(error: LoadError) -> pb.PluginLoadError:
    return pb.PluginLoadError(source=error.source, message=error.message)
