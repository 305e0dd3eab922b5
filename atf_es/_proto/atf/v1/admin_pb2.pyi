from atf_es._proto.atf.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GateAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_ACTION_UNSPECIFIED: _ClassVar[GateAction]
    GATE_ACTION_PAUSE: _ClassVar[GateAction]
    GATE_ACTION_DROP: _ClassVar[GateAction]
    GATE_ACTION_RESUME: _ClassVar[GateAction]

class Misfire(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISFIRE_UNSPECIFIED: _ClassVar[Misfire]
    MISFIRE_SKIP: _ClassVar[Misfire]
    MISFIRE_CATCH_UP: _ClassVar[Misfire]
GATE_ACTION_UNSPECIFIED: GateAction
GATE_ACTION_PAUSE: GateAction
GATE_ACTION_DROP: GateAction
GATE_ACTION_RESUME: GateAction
MISFIRE_UNSPECIFIED: Misfire
MISFIRE_SKIP: Misfire
MISFIRE_CATCH_UP: Misfire

class Gate(_message.Message):
    __slots__ = ("lambda_name", "collection", "action", "reason", "set_by", "set_at_ms")
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    SET_AT_MS_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    collection: str
    action: GateAction
    reason: str
    set_by: str
    set_at_ms: int
    def __init__(self, lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., action: _Optional[_Union[GateAction, str]] = ..., reason: _Optional[str] = ..., set_by: _Optional[str] = ..., set_at_ms: _Optional[int] = ...) -> None: ...

class SetGateRequest(_message.Message):
    __slots__ = ("gate",)
    GATE_FIELD_NUMBER: _ClassVar[int]
    gate: Gate
    def __init__(self, gate: _Optional[_Union[Gate, _Mapping]] = ...) -> None: ...

class SetGateResponse(_message.Message):
    __slots__ = ("gate",)
    GATE_FIELD_NUMBER: _ClassVar[int]
    gate: Gate
    def __init__(self, gate: _Optional[_Union[Gate, _Mapping]] = ...) -> None: ...

class ListGatesRequest(_message.Message):
    __slots__ = ("lambda_name",)
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    def __init__(self, lambda_name: _Optional[str] = ...) -> None: ...

class ListGatesResponse(_message.Message):
    __slots__ = ("gates",)
    GATES_FIELD_NUMBER: _ClassVar[int]
    gates: _containers.RepeatedCompositeFieldContainer[Gate]
    def __init__(self, gates: _Optional[_Iterable[_Union[Gate, _Mapping]]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("lambda_name", "collection", "page_size", "page_token", "error_contains", "dead_lettered_after_ms", "dead_lettered_before_ms")
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_CONTAINS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    collection: str
    page_size: int
    page_token: str
    error_contains: str
    dead_lettered_after_ms: int
    dead_lettered_before_ms: int
    def __init__(self, lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., error_contains: _Optional[str] = ..., dead_lettered_after_ms: _Optional[int] = ..., dead_lettered_before_ms: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token", "total_size")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskInfo]
    next_page_token: str
    total_size: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class DeadLetterCountsRequest(_message.Message):
    __slots__ = ("lambda_name",)
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    def __init__(self, lambda_name: _Optional[str] = ...) -> None: ...

class DeadLetterCount(_message.Message):
    __slots__ = ("lambda_name", "count", "by_collection", "oldest_at_ms", "newest_at_ms")
    class ByCollectionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BY_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NEWEST_AT_MS_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    count: int
    by_collection: _containers.ScalarMap[str, int]
    oldest_at_ms: int
    newest_at_ms: int
    def __init__(self, lambda_name: _Optional[str] = ..., count: _Optional[int] = ..., by_collection: _Optional[_Mapping[str, int]] = ..., oldest_at_ms: _Optional[int] = ..., newest_at_ms: _Optional[int] = ...) -> None: ...

class DeadLetterCountsResponse(_message.Message):
    __slots__ = ("lambdas", "total")
    LAMBDAS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    lambdas: _containers.RepeatedCompositeFieldContainer[DeadLetterCount]
    total: int
    def __init__(self, lambdas: _Optional[_Iterable[_Union[DeadLetterCount, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class DeadLetterFilter(_message.Message):
    __slots__ = ("lambda_name", "collection", "error_contains", "dead_lettered_after_ms", "dead_lettered_before_ms")
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_CONTAINS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    collection: str
    error_contains: str
    dead_lettered_after_ms: int
    dead_lettered_before_ms: int
    def __init__(self, lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., error_contains: _Optional[str] = ..., dead_lettered_after_ms: _Optional[int] = ..., dead_lettered_before_ms: _Optional[int] = ...) -> None: ...

class RedriveRequest(_message.Message):
    __slots__ = ("task_ids", "reason", "requested_by", "filter", "page_size", "page_token")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    requested_by: str
    filter: DeadLetterFilter
    page_size: int
    page_token: str
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., filter: _Optional[_Union[DeadLetterFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RedriveResponse(_message.Message):
    __slots__ = ("replies", "next_page_token", "remaining")
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[_common_pb2.CommandReply]
    next_page_token: str
    remaining: int
    def __init__(self, replies: _Optional[_Iterable[_Union[_common_pb2.CommandReply, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., remaining: _Optional[int] = ...) -> None: ...

class PeriodicSchedule(_message.Message):
    __slots__ = ("name", "lambda_name", "collection", "priority", "payload", "cron", "every_ms", "time_zone", "start_ms", "end_ms", "misfire", "catch_up_max", "misfire_grace_ms", "paused", "set_by", "defined_at_ms", "next_fire_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    EVERY_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_MAX_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    DEFINED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIRE_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    cron: str
    every_ms: int
    time_zone: str
    start_ms: int
    end_ms: int
    misfire: Misfire
    catch_up_max: int
    misfire_grace_ms: int
    paused: bool
    set_by: str
    defined_at_ms: int
    next_fire_ms: int
    def __init__(self, name: _Optional[str] = ..., lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., priority: _Optional[int] = ..., payload: _Optional[bytes] = ..., cron: _Optional[str] = ..., every_ms: _Optional[int] = ..., time_zone: _Optional[str] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., misfire: _Optional[_Union[Misfire, str]] = ..., catch_up_max: _Optional[int] = ..., misfire_grace_ms: _Optional[int] = ..., paused: _Optional[bool] = ..., set_by: _Optional[str] = ..., defined_at_ms: _Optional[int] = ..., next_fire_ms: _Optional[int] = ...) -> None: ...

class SetPeriodicRequest(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: PeriodicSchedule
    def __init__(self, schedule: _Optional[_Union[PeriodicSchedule, _Mapping]] = ...) -> None: ...

class SetPeriodicResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: PeriodicSchedule
    def __init__(self, schedule: _Optional[_Union[PeriodicSchedule, _Mapping]] = ...) -> None: ...

class ListPeriodicRequest(_message.Message):
    __slots__ = ("lambda_name",)
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    def __init__(self, lambda_name: _Optional[str] = ...) -> None: ...

class ListPeriodicResponse(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[PeriodicSchedule]
    def __init__(self, schedules: _Optional[_Iterable[_Union[PeriodicSchedule, _Mapping]]] = ...) -> None: ...

class PausePeriodicRequest(_message.Message):
    __slots__ = ("name", "paused", "set_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    paused: bool
    set_by: str
    def __init__(self, name: _Optional[str] = ..., paused: _Optional[bool] = ..., set_by: _Optional[str] = ...) -> None: ...

class PausePeriodicResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: PeriodicSchedule
    def __init__(self, schedule: _Optional[_Union[PeriodicSchedule, _Mapping]] = ...) -> None: ...

class RemovePeriodicRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemovePeriodicResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class OverviewRequest(_message.Message):
    __slots__ = ("lambda_name",)
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    def __init__(self, lambda_name: _Optional[str] = ...) -> None: ...

class TaskCount(_message.Message):
    __slots__ = ("collection", "status", "count")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    status: _common_pb2.TaskStatus
    count: int
    def __init__(self, collection: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.TaskStatus, str]] = ..., count: _Optional[int] = ...) -> None: ...

class DepthSample(_message.Message):
    __slots__ = ("at_ms", "enqueued", "due")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_FIELD_NUMBER: _ClassVar[int]
    DUE_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    enqueued: int
    due: int
    def __init__(self, at_ms: _Optional[int] = ..., enqueued: _Optional[int] = ..., due: _Optional[int] = ...) -> None: ...

class LatencySample(_message.Message):
    __slots__ = ("at_ms", "started", "p50_ms", "p95_ms", "max_ms")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    started: int
    p50_ms: int
    p95_ms: int
    max_ms: int
    def __init__(self, at_ms: _Optional[int] = ..., started: _Optional[int] = ..., p50_ms: _Optional[int] = ..., p95_ms: _Optional[int] = ..., max_ms: _Optional[int] = ...) -> None: ...

class LambdaOverview(_message.Message):
    __slots__ = ("lambda_name", "counts", "depth", "latency")
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    counts: _containers.RepeatedCompositeFieldContainer[TaskCount]
    depth: _containers.RepeatedCompositeFieldContainer[DepthSample]
    latency: _containers.RepeatedCompositeFieldContainer[LatencySample]
    def __init__(self, lambda_name: _Optional[str] = ..., counts: _Optional[_Iterable[_Union[TaskCount, _Mapping]]] = ..., depth: _Optional[_Iterable[_Union[DepthSample, _Mapping]]] = ..., latency: _Optional[_Iterable[_Union[LatencySample, _Mapping]]] = ...) -> None: ...

class OverviewResponse(_message.Message):
    __slots__ = ("lambdas", "sample_interval_ms", "sampling_since_ms", "as_of_ms", "tasks")
    LAMBDAS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    lambdas: _containers.RepeatedCompositeFieldContainer[LambdaOverview]
    sample_interval_ms: int
    sampling_since_ms: int
    as_of_ms: int
    tasks: int
    def __init__(self, lambdas: _Optional[_Iterable[_Union[LambdaOverview, _Mapping]]] = ..., sample_interval_ms: _Optional[int] = ..., sampling_since_ms: _Optional[int] = ..., as_of_ms: _Optional[int] = ..., tasks: _Optional[int] = ...) -> None: ...
