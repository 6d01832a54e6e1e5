from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaAppend(_message.Message):
    __slots__ = ("topic", "first_seq", "records", "uncommitted", "crcs")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    UNCOMMITTED_FIELD_NUMBER: _ClassVar[int]
    CRCS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    first_seq: int
    records: _containers.RepeatedScalarFieldContainer[bytes]
    uncommitted: bool
    crcs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, topic: _Optional[str] = ..., first_seq: _Optional[int] = ..., records: _Optional[_Iterable[bytes]] = ..., uncommitted: _Optional[bool] = ..., crcs: _Optional[_Iterable[int]] = ...) -> None: ...

class ReplicaRange(_message.Message):
    __slots__ = ("topic", "first_seq", "count")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    first_seq: int
    count: int
    def __init__(self, topic: _Optional[str] = ..., first_seq: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ReplicaState(_message.Message):
    __slots__ = ("seq", "attempts", "due_ns", "cleared")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DUE_NS_FIELD_NUMBER: _ClassVar[int]
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    attempts: int
    due_ns: int
    cleared: bool
    def __init__(self, seq: _Optional[int] = ..., attempts: _Optional[int] = ..., due_ns: _Optional[int] = ..., cleared: _Optional[bool] = ...) -> None: ...

class ReplicaProgress(_message.Message):
    __slots__ = ("topic", "channel", "floor", "finished", "deleted", "states", "created_ns", "deleted_ns")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    DELETED_NS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    floor: int
    finished: _containers.RepeatedScalarFieldContainer[int]
    deleted: bool
    states: _containers.RepeatedCompositeFieldContainer[ReplicaState]
    created_ns: int
    deleted_ns: int
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ..., floor: _Optional[int] = ..., finished: _Optional[_Iterable[int]] = ..., deleted: _Optional[bool] = ..., states: _Optional[_Iterable[_Union[ReplicaState, _Mapping]]] = ..., created_ns: _Optional[int] = ..., deleted_ns: _Optional[int] = ...) -> None: ...

class ReplicaHello(_message.Message):
    __slots__ = ("node_id", "pair", "tcp", "nonce")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    pair: str
    tcp: bool
    nonce: bytes
    def __init__(self, node_id: _Optional[str] = ..., pair: _Optional[str] = ..., tcp: _Optional[bool] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class ReplicaProof(_message.Message):
    __slots__ = ("proof",)
    PROOF_FIELD_NUMBER: _ClassVar[int]
    proof: bytes
    def __init__(self, proof: _Optional[bytes] = ...) -> None: ...

class ReplicaChallenge(_message.Message):
    __slots__ = ("nonce", "proof")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    proof: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class ReplicaBatch(_message.Message):
    __slots__ = ("batch_id", "appends", "progress", "deleted_topics", "committed", "catalog", "catchup_remaining", "catchup", "traces")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    APPENDS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DELETED_TOPICS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_REMAINING_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_FIELD_NUMBER: _ClassVar[int]
    TRACES_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    appends: _containers.RepeatedCompositeFieldContainer[ReplicaAppend]
    progress: _containers.RepeatedCompositeFieldContainer[ReplicaProgress]
    deleted_topics: _containers.RepeatedScalarFieldContainer[str]
    committed: _containers.RepeatedCompositeFieldContainer[ReplicaRange]
    catalog: bool
    catchup_remaining: int
    catchup: bool
    traces: _containers.RepeatedCompositeFieldContainer[ReplicaTrace]
    def __init__(self, batch_id: _Optional[int] = ..., appends: _Optional[_Iterable[_Union[ReplicaAppend, _Mapping]]] = ..., progress: _Optional[_Iterable[_Union[ReplicaProgress, _Mapping]]] = ..., deleted_topics: _Optional[_Iterable[str]] = ..., committed: _Optional[_Iterable[_Union[ReplicaRange, _Mapping]]] = ..., catalog: _Optional[bool] = ..., catchup_remaining: _Optional[int] = ..., catchup: _Optional[bool] = ..., traces: _Optional[_Iterable[_Union[ReplicaTrace, _Mapping]]] = ...) -> None: ...

class ReplicaTrace(_message.Message):
    __slots__ = ("topic", "message_id", "traceparent")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    message_id: bytes
    traceparent: str
    def __init__(self, topic: _Optional[str] = ..., message_id: _Optional[bytes] = ..., traceparent: _Optional[str] = ...) -> None: ...

class ReplicateRequest(_message.Message):
    __slots__ = ("hello", "batch", "proof")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    hello: ReplicaHello
    batch: ReplicaBatch
    proof: ReplicaProof
    def __init__(self, hello: _Optional[_Union[ReplicaHello, _Mapping]] = ..., batch: _Optional[_Union[ReplicaBatch, _Mapping]] = ..., proof: _Optional[_Union[ReplicaProof, _Mapping]] = ...) -> None: ...

class ReplicaHolding(_message.Message):
    __slots__ = ("topic", "next_seq", "taken_upto")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    TAKEN_UPTO_FIELD_NUMBER: _ClassVar[int]
    topic: str
    next_seq: int
    taken_upto: int
    def __init__(self, topic: _Optional[str] = ..., next_seq: _Optional[int] = ..., taken_upto: _Optional[int] = ...) -> None: ...

class ReplicaWelcome(_message.Message):
    __slots__ = ("node_id", "holdings", "tcp_port", "tcp_token")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDINGS_FIELD_NUMBER: _ClassVar[int]
    TCP_PORT_FIELD_NUMBER: _ClassVar[int]
    TCP_TOKEN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    holdings: _containers.RepeatedCompositeFieldContainer[ReplicaHolding]
    tcp_port: int
    tcp_token: bytes
    def __init__(self, node_id: _Optional[str] = ..., holdings: _Optional[_Iterable[_Union[ReplicaHolding, _Mapping]]] = ..., tcp_port: _Optional[int] = ..., tcp_token: _Optional[bytes] = ...) -> None: ...

class ReplicaAck(_message.Message):
    __slots__ = ("batch_id", "lease_ms")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    lease_ms: int
    def __init__(self, batch_id: _Optional[int] = ..., lease_ms: _Optional[int] = ...) -> None: ...

class ReplicateResponse(_message.Message):
    __slots__ = ("welcome", "ack", "challenge")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    welcome: ReplicaWelcome
    ack: ReplicaAck
    challenge: ReplicaChallenge
    def __init__(self, welcome: _Optional[_Union[ReplicaWelcome, _Mapping]] = ..., ack: _Optional[_Union[ReplicaAck, _Mapping]] = ..., challenge: _Optional[_Union[ReplicaChallenge, _Mapping]] = ...) -> None: ...

class RepairRequest(_message.Message):
    __slots__ = ("topic", "seqs", "owned")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    topic: str
    seqs: _containers.RepeatedScalarFieldContainer[int]
    owned: bool
    def __init__(self, topic: _Optional[str] = ..., seqs: _Optional[_Iterable[int]] = ..., owned: _Optional[bool] = ...) -> None: ...

class RepairResponse(_message.Message):
    __slots__ = ("seqs", "records", "crcs", "store_full")
    SEQS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    CRCS_FIELD_NUMBER: _ClassVar[int]
    STORE_FULL_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    crcs: _containers.RepeatedScalarFieldContainer[int]
    store_full: str
    def __init__(self, seqs: _Optional[_Iterable[int]] = ..., records: _Optional[_Iterable[bytes]] = ..., crcs: _Optional[_Iterable[int]] = ..., store_full: _Optional[str] = ...) -> None: ...
