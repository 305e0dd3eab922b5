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
GATE_ACTION_UNSPECIFIED: GateAction
GATE_ACTION_PAUSE: GateAction
GATE_ACTION_DROP: GateAction
GATE_ACTION_RESUME: GateAction

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
    __slots__ = ("lambda_name", "collection", "page_size", "page_token")
    LAMBDA_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lambda_name: str
    collection: str
    page_size: int
    page_token: str
    def __init__(self, lambda_name: _Optional[str] = ..., collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TaskInfo]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RedriveRequest(_message.Message):
    __slots__ = ("task_ids", "reason", "requested_by")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    requested_by: str
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class RedriveResponse(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[_common_pb2.CommandReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[_common_pb2.CommandReply, _Mapping]]] = ...) -> None: ...
