from atf_es._proto.atf.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskSpec(_message.Message):
    __slots__ = ("lambda_name", "collection", "priority", "payload", "run_at_ms", "delay_ms", "idempotency_key", "task_id")
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    run_at_ms: int
    delay_ms: int
    idempotency_key: str
    task_id: str
    def __init__(self, lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., priority: _Optional[int] = ..., payload: _Optional[bytes] = ..., run_at_ms: _Optional[int] = ..., delay_ms: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class ScheduleRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: TaskSpec
    def __init__(self, spec: _Optional[_Union[TaskSpec, _Mapping]] = ...) -> None: ...

class ScheduleResponse(_message.Message):
    __slots__ = ("task_id", "created", "task")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    created: bool
    task: _common_pb2.TaskInfo
    def __init__(self, task_id: _Optional[str] = ..., created: _Optional[bool] = ..., task: _Optional[_Union[_common_pb2.TaskInfo, _Mapping]] = ...) -> None: ...

class ScheduleBatchRequest(_message.Message):
    __slots__ = ("specs",)
    SPECS_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    def __init__(self, specs: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ...) -> None: ...

class ScheduleResult(_message.Message):
    __slots__ = ("task_id", "created", "code", "message", "retry_after_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    created: bool
    code: _common_pb2.ReplyCode
    message: str
    retry_after_ms: int
    def __init__(self, task_id: _Optional[str] = ..., created: _Optional[bool] = ..., code: _Optional[_Union[_common_pb2.ReplyCode, str]] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class ScheduleBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScheduleResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ScheduleResult, _Mapping]]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id", "include_payload", "as_of_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    include_payload: bool
    as_of_ms: int
    def __init__(self, task_id: _Optional[str] = ..., include_payload: _Optional[bool] = ..., as_of_ms: _Optional[int] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.TaskInfo
    def __init__(self, task: _Optional[_Union[_common_pb2.TaskInfo, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("task_id", "reason", "requested_by")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    requested_by: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.TaskInfo
    def __init__(self, task: _Optional[_Union[_common_pb2.TaskInfo, _Mapping]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_common_pb2.HistoryEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[_common_pb2.HistoryEntry, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("task_id", "from_start", "lambdas", "collections", "statuses", "from_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_START_FIELD_NUMBER: _ClassVar[int]
    LAMBDAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    FROM_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    from_start: bool
    lambdas: _containers.RepeatedScalarFieldContainer[str]
    collections: _containers.RepeatedScalarFieldContainer[str]
    statuses: _containers.RepeatedScalarFieldContainer[_common_pb2.TaskStatus]
    from_ms: int
    def __init__(self, task_id: _Optional[str] = ..., from_start: _Optional[bool] = ..., lambdas: _Optional[_Iterable[str]] = ..., collections: _Optional[_Iterable[str]] = ..., statuses: _Optional[_Iterable[_Union[_common_pb2.TaskStatus, str]]] = ..., from_ms: _Optional[int] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("entry", "task")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.HistoryEntry
    task: _common_pb2.TaskInfo
    def __init__(self, entry: _Optional[_Union[_common_pb2.HistoryEntry, _Mapping]] = ..., task: _Optional[_Union[_common_pb2.TaskInfo, _Mapping]] = ...) -> None: ...
