from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNSPECIFIED: _ClassVar[TaskStatus]
    TASK_STATUS_NEW: _ClassVar[TaskStatus]
    TASK_STATUS_ENQUEUED: _ClassVar[TaskStatus]
    TASK_STATUS_CLAIMED: _ClassVar[TaskStatus]
    TASK_STATUS_PROCESSING: _ClassVar[TaskStatus]
    TASK_STATUS_RETRIABLE_FAILURE: _ClassVar[TaskStatus]
    TASK_STATUS_SUCCESS: _ClassVar[TaskStatus]
    TASK_STATUS_FATAL_FAILURE: _ClassVar[TaskStatus]
    TASK_STATUS_CANCELLED: _ClassVar[TaskStatus]
    TASK_STATUS_DEAD_LETTERED: _ClassVar[TaskStatus]
    TASK_STATUS_DROPPED: _ClassVar[TaskStatus]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_TASK_SCHEDULED: _ClassVar[EventKind]
    EVENT_KIND_TASK_ENQUEUED: _ClassVar[EventKind]
    EVENT_KIND_TASK_CLAIMED: _ClassVar[EventKind]
    EVENT_KIND_TASK_STARTED: _ClassVar[EventKind]
    EVENT_KIND_HEARTBEAT_RECORDED: _ClassVar[EventKind]
    EVENT_KIND_TASK_SUCCEEDED: _ClassVar[EventKind]
    EVENT_KIND_TASK_FAILED: _ClassVar[EventKind]
    EVENT_KIND_TASK_FAILED_FATALLY: _ClassVar[EventKind]
    EVENT_KIND_TASK_DEAD_LETTERED: _ClassVar[EventKind]
    EVENT_KIND_TASK_CANCELLED: _ClassVar[EventKind]
    EVENT_KIND_TASK_DROPPED: _ClassVar[EventKind]
    EVENT_KIND_TASK_REDRIVEN: _ClassVar[EventKind]
    EVENT_KIND_TASK_HELD: _ClassVar[EventKind]

class ReplyCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLY_CODE_UNSPECIFIED: _ClassVar[ReplyCode]
    REPLY_CODE_OK: _ClassVar[ReplyCode]
    REPLY_CODE_NOT_FOUND: _ClassVar[ReplyCode]
    REPLY_CODE_STALE_LEASE: _ClassVar[ReplyCode]
    REPLY_CODE_WRONG_STATE: _ClassVar[ReplyCode]
    REPLY_CODE_CANCELLED: _ClassVar[ReplyCode]
    REPLY_CODE_INVALID: _ClassVar[ReplyCode]
    REPLY_CODE_ALREADY_EXISTS: _ClassVar[ReplyCode]
    REPLY_CODE_UNKNOWN_LAMBDA: _ClassVar[ReplyCode]
    REPLY_CODE_OVER_QUOTA: _ClassVar[ReplyCode]

class CauseKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAUSE_KIND_UNSPECIFIED: _ClassVar[CauseKind]
    CAUSE_KIND_COMMAND: _ClassVar[CauseKind]
    CAUSE_KIND_TIMER: _ClassVar[CauseKind]
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_NEW: TaskStatus
TASK_STATUS_ENQUEUED: TaskStatus
TASK_STATUS_CLAIMED: TaskStatus
TASK_STATUS_PROCESSING: TaskStatus
TASK_STATUS_RETRIABLE_FAILURE: TaskStatus
TASK_STATUS_SUCCESS: TaskStatus
TASK_STATUS_FATAL_FAILURE: TaskStatus
TASK_STATUS_CANCELLED: TaskStatus
TASK_STATUS_DEAD_LETTERED: TaskStatus
TASK_STATUS_DROPPED: TaskStatus
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_TASK_SCHEDULED: EventKind
EVENT_KIND_TASK_ENQUEUED: EventKind
EVENT_KIND_TASK_CLAIMED: EventKind
EVENT_KIND_TASK_STARTED: EventKind
EVENT_KIND_HEARTBEAT_RECORDED: EventKind
EVENT_KIND_TASK_SUCCEEDED: EventKind
EVENT_KIND_TASK_FAILED: EventKind
EVENT_KIND_TASK_FAILED_FATALLY: EventKind
EVENT_KIND_TASK_DEAD_LETTERED: EventKind
EVENT_KIND_TASK_CANCELLED: EventKind
EVENT_KIND_TASK_DROPPED: EventKind
EVENT_KIND_TASK_REDRIVEN: EventKind
EVENT_KIND_TASK_HELD: EventKind
REPLY_CODE_UNSPECIFIED: ReplyCode
REPLY_CODE_OK: ReplyCode
REPLY_CODE_NOT_FOUND: ReplyCode
REPLY_CODE_STALE_LEASE: ReplyCode
REPLY_CODE_WRONG_STATE: ReplyCode
REPLY_CODE_CANCELLED: ReplyCode
REPLY_CODE_INVALID: ReplyCode
REPLY_CODE_ALREADY_EXISTS: ReplyCode
REPLY_CODE_UNKNOWN_LAMBDA: ReplyCode
REPLY_CODE_OVER_QUOTA: ReplyCode
CAUSE_KIND_UNSPECIFIED: CauseKind
CAUSE_KIND_COMMAND: CauseKind
CAUSE_KIND_TIMER: CauseKind

class Cause(_message.Message):
    __slots__ = ("kind", "name", "command_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    kind: CauseKind
    name: str
    command_id: str
    def __init__(self, kind: _Optional[_Union[CauseKind, str]] = ..., name: _Optional[str] = ..., command_id: _Optional[str] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "lambda_name", "collection", "priority", "status", "attempts", "lease", "seq", "created_at_ms", "scheduled_at_ms", "next_trigger_at_ms", "enqueued_at_ms", "claimed_at_ms", "started_at_ms", "heartbeat_at_ms", "finished_at_ms", "worker", "last_error", "result", "idempotency_key", "payload", "held_by", "held_action", "chain_id", "chain_node", "root_task_id", "parent_task_ids", "scheduled_by")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TRIGGER_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HELD_BY_FIELD_NUMBER: _ClassVar[int]
    HELD_ACTION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_NODE_FIELD_NUMBER: _ClassVar[int]
    ROOT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_BY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lambda_name: str
    collection: str
    priority: int
    status: TaskStatus
    attempts: int
    lease: int
    seq: int
    created_at_ms: int
    scheduled_at_ms: int
    next_trigger_at_ms: int
    enqueued_at_ms: int
    claimed_at_ms: int
    started_at_ms: int
    heartbeat_at_ms: int
    finished_at_ms: int
    worker: str
    last_error: str
    result: bytes
    idempotency_key: str
    payload: bytes
    held_by: str
    held_action: str
    chain_id: str
    chain_node: str
    root_task_id: str
    parent_task_ids: _containers.RepeatedScalarFieldContainer[str]
    scheduled_by: str
    def __init__(self, task_id: _Optional[str] = ..., lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., priority: _Optional[int] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., attempts: _Optional[int] = ..., lease: _Optional[int] = ..., seq: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., scheduled_at_ms: _Optional[int] = ..., next_trigger_at_ms: _Optional[int] = ..., enqueued_at_ms: _Optional[int] = ..., claimed_at_ms: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., heartbeat_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., worker: _Optional[str] = ..., last_error: _Optional[str] = ..., result: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ..., payload: _Optional[bytes] = ..., held_by: _Optional[str] = ..., held_action: _Optional[str] = ..., chain_id: _Optional[str] = ..., chain_node: _Optional[str] = ..., root_task_id: _Optional[str] = ..., parent_task_ids: _Optional[_Iterable[str]] = ..., scheduled_by: _Optional[str] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("seq", "kind", "at_ms", "cause", "status", "lease", "worker", "error", "deadline_ms", "retry_at_ms", "requested_by", "reason", "gate", "run_at_ms", "since_previous_ms", "root_task_id", "parent_task_ids")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SINCE_PREVIOUS_MS_FIELD_NUMBER: _ClassVar[int]
    ROOT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: EventKind
    at_ms: int
    cause: Cause
    status: TaskStatus
    lease: int
    worker: str
    error: str
    deadline_ms: int
    retry_at_ms: int
    requested_by: str
    reason: str
    gate: str
    run_at_ms: int
    since_previous_ms: int
    root_task_id: str
    parent_task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., at_ms: _Optional[int] = ..., cause: _Optional[_Union[Cause, _Mapping]] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., lease: _Optional[int] = ..., worker: _Optional[str] = ..., error: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., retry_at_ms: _Optional[int] = ..., requested_by: _Optional[str] = ..., reason: _Optional[str] = ..., gate: _Optional[str] = ..., run_at_ms: _Optional[int] = ..., since_previous_ms: _Optional[int] = ..., root_task_id: _Optional[str] = ..., parent_task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CommandReply(_message.Message):
    __slots__ = ("task_id", "code", "message")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    code: ReplyCode
    message: str
    def __init__(self, task_id: _Optional[str] = ..., code: _Optional[_Union[ReplyCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class WorkItem(_message.Message):
    __slots__ = ("task_id", "lease", "lambda_name", "collection", "priority", "payload", "scheduled_at_ms", "enqueued_at_ms", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease: int
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    scheduled_at_ms: int
    enqueued_at_ms: int
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., lease: _Optional[int] = ..., lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., priority: _Optional[int] = ..., payload: _Optional[bytes] = ..., scheduled_at_ms: _Optional[int] = ..., enqueued_at_ms: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...
