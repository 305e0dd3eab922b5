from atf_es._proto.atf.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChainFailurePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHAIN_FAILURE_POLICY_UNSPECIFIED: _ClassVar[ChainFailurePolicy]
    CHAIN_FAILURE_POLICY_STOP: _ClassVar[ChainFailurePolicy]
    CHAIN_FAILURE_POLICY_CONTINUE: _ClassVar[ChainFailurePolicy]

class ChainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHAIN_STATE_UNSPECIFIED: _ClassVar[ChainState]
    CHAIN_STATE_RUNNING: _ClassVar[ChainState]
    CHAIN_STATE_SUCCEEDED: _ClassVar[ChainState]
    CHAIN_STATE_FAILED: _ClassVar[ChainState]
CHAIN_FAILURE_POLICY_UNSPECIFIED: ChainFailurePolicy
CHAIN_FAILURE_POLICY_STOP: ChainFailurePolicy
CHAIN_FAILURE_POLICY_CONTINUE: ChainFailurePolicy
CHAIN_STATE_UNSPECIFIED: ChainState
CHAIN_STATE_RUNNING: ChainState
CHAIN_STATE_SUCCEEDED: ChainState
CHAIN_STATE_FAILED: ChainState

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

class ChainNodeSpec(_message.Message):
    __slots__ = ("name", "lambda_name", "collection", "priority", "payload", "delay_ms", "parents")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    delay_ms: int
    parents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., priority: _Optional[int] = ..., payload: _Optional[bytes] = ..., delay_ms: _Optional[int] = ..., parents: _Optional[_Iterable[str]] = ...) -> None: ...

class ScheduleChainRequest(_message.Message):
    __slots__ = ("chain_id", "nodes", "on_failure", "run_at_ms", "delay_ms")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[ChainNodeSpec]
    on_failure: ChainFailurePolicy
    run_at_ms: int
    delay_ms: int
    def __init__(self, chain_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[ChainNodeSpec, _Mapping]]] = ..., on_failure: _Optional[_Union[ChainFailurePolicy, str]] = ..., run_at_ms: _Optional[int] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class ChainNodeRef(_message.Message):
    __slots__ = ("name", "task_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    task_id: str
    def __init__(self, name: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class ScheduleChainResponse(_message.Message):
    __slots__ = ("chain_id", "created", "nodes")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    created: bool
    nodes: _containers.RepeatedCompositeFieldContainer[ChainNodeRef]
    def __init__(self, chain_id: _Optional[str] = ..., created: _Optional[bool] = ..., nodes: _Optional[_Iterable[_Union[ChainNodeRef, _Mapping]]] = ...) -> None: ...

class GetChainRequest(_message.Message):
    __slots__ = ("chain_id",)
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    def __init__(self, chain_id: _Optional[str] = ...) -> None: ...

class ChainNodeStatus(_message.Message):
    __slots__ = ("name", "task_id", "state", "parents", "task", "blocked_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    task_id: str
    state: str
    parents: _containers.RepeatedScalarFieldContainer[str]
    task: _common_pb2.TaskInfo
    blocked_by: str
    def __init__(self, name: _Optional[str] = ..., task_id: _Optional[str] = ..., state: _Optional[str] = ..., parents: _Optional[_Iterable[str]] = ..., task: _Optional[_Union[_common_pb2.TaskInfo, _Mapping]] = ..., blocked_by: _Optional[str] = ...) -> None: ...

class GetChainResponse(_message.Message):
    __slots__ = ("chain_id", "state", "on_failure", "summary", "nodes")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    chain_id: str
    state: ChainState
    on_failure: ChainFailurePolicy
    summary: str
    nodes: _containers.RepeatedCompositeFieldContainer[ChainNodeStatus]
    def __init__(self, chain_id: _Optional[str] = ..., state: _Optional[_Union[ChainState, str]] = ..., on_failure: _Optional[_Union[ChainFailurePolicy, str]] = ..., summary: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[ChainNodeStatus, _Mapping]]] = ...) -> None: ...
