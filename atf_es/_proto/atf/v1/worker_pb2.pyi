from atf_es._proto.atf.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCESS: _ClassVar[Outcome]
    OUTCOME_RETRIABLE: _ClassVar[Outcome]
    OUTCOME_FATAL: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCESS: Outcome
OUTCOME_RETRIABLE: Outcome
OUTCOME_FATAL: Outcome

class ClaimTaskRequest(_message.Message):
    __slots__ = ("task_id", "lease", "worker", "start")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease: int
    worker: str
    start: bool
    def __init__(self, task_id: _Optional[str] = ..., lease: _Optional[int] = ..., worker: _Optional[str] = ..., start: _Optional[bool] = ...) -> None: ...

class ClaimTaskResponse(_message.Message):
    __slots__ = ("reply",)
    REPLY_FIELD_NUMBER: _ClassVar[int]
    reply: _common_pb2.CommandReply
    def __init__(self, reply: _Optional[_Union[_common_pb2.CommandReply, _Mapping]] = ...) -> None: ...

class ClaimTasksRequest(_message.Message):
    __slots__ = ("claims",)
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    claims: _containers.RepeatedCompositeFieldContainer[ClaimTaskRequest]
    def __init__(self, claims: _Optional[_Iterable[_Union[ClaimTaskRequest, _Mapping]]] = ...) -> None: ...

class ClaimTasksResponse(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[_common_pb2.CommandReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[_common_pb2.CommandReply, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("task_id", "lease", "worker")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease: int
    worker: str
    def __init__(self, task_id: _Optional[str] = ..., lease: _Optional[int] = ..., worker: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("reply",)
    REPLY_FIELD_NUMBER: _ClassVar[int]
    reply: _common_pb2.CommandReply
    def __init__(self, reply: _Optional[_Union[_common_pb2.CommandReply, _Mapping]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "lease", "worker", "outcome", "error", "result")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease: int
    worker: str
    outcome: Outcome
    error: str
    result: bytes
    def __init__(self, task_id: _Optional[str] = ..., lease: _Optional[int] = ..., worker: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., error: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class SetResultsRequest(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...

class SetResultsResponse(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[_common_pb2.CommandReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[_common_pb2.CommandReply, _Mapping]]] = ...) -> None: ...

class NextWorkRequest(_message.Message):
    __slots__ = ("worker", "max_tasks", "wait_ms", "lambda_names", "start")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_NAMES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    worker: str
    max_tasks: int
    wait_ms: int
    lambda_names: _containers.RepeatedScalarFieldContainer[str]
    start: bool
    def __init__(self, worker: _Optional[str] = ..., max_tasks: _Optional[int] = ..., wait_ms: _Optional[int] = ..., lambda_names: _Optional[_Iterable[str]] = ..., start: _Optional[bool] = ...) -> None: ...

class NextWorkResponse(_message.Message):
    __slots__ = ("items", "started", "claimed_at_ms")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.WorkItem]
    started: bool
    claimed_at_ms: int
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.WorkItem, _Mapping]]] = ..., started: _Optional[bool] = ..., claimed_at_ms: _Optional[int] = ...) -> None: ...
