from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_TOPIC: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_CHANNEL: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_MESSAGE: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_BATCH: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_RDY: _ClassVar[ErrorCode]
    ERROR_CODE_FIN_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_REQ_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_TOUCH_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_STORE_FULL: _ClassVar[ErrorCode]
    ERROR_CODE_TOO_MANY: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_IDENTIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_HEARTBEAT_TIMEOUT: _ClassVar[ErrorCode]
    ERROR_CODE_DELETED: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INVALID: ErrorCode
ERROR_CODE_BAD_TOPIC: ErrorCode
ERROR_CODE_BAD_CHANNEL: ErrorCode
ERROR_CODE_BAD_MESSAGE: ErrorCode
ERROR_CODE_BAD_BATCH: ErrorCode
ERROR_CODE_BAD_RDY: ErrorCode
ERROR_CODE_FIN_FAILED: ErrorCode
ERROR_CODE_REQ_FAILED: ErrorCode
ERROR_CODE_TOUCH_FAILED: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_STORE_FULL: ErrorCode
ERROR_CODE_TOO_MANY: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_NOT_IDENTIFIED: ErrorCode
ERROR_CODE_HEARTBEAT_TIMEOUT: ErrorCode
ERROR_CODE_DELETED: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode

class Message(_message.Message):
    __slots__ = ("id", "body", "headers", "timestamp_ns", "attempts", "broker_id", "epoch")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    body: bytes
    headers: _containers.ScalarMap[str, str]
    timestamp_ns: int
    attempts: int
    broker_id: str
    epoch: int
    def __init__(self, id: _Optional[bytes] = ..., body: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., timestamp_ns: _Optional[int] = ..., attempts: _Optional[int] = ..., broker_id: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class PublishItem(_message.Message):
    __slots__ = ("id", "body", "headers", "defer_ms")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    DEFER_MS_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    body: bytes
    headers: _containers.ScalarMap[str, str]
    defer_ms: int
    def __init__(self, id: _Optional[bytes] = ..., body: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., defer_ms: _Optional[int] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("topic", "message")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    message: PublishItem
    def __init__(self, topic: _Optional[str] = ..., message: _Optional[_Union[PublishItem, _Mapping]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("id", "copies")
    ID_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    copies: int
    def __init__(self, id: _Optional[bytes] = ..., copies: _Optional[int] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("topic", "messages")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    topic: str
    messages: _containers.RepeatedCompositeFieldContainer[PublishItem]
    def __init__(self, topic: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[PublishItem, _Mapping]]] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("ids", "copies")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    copies: int
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ..., copies: _Optional[int] = ...) -> None: ...

class PublishStreamRequest(_message.Message):
    __slots__ = ("request_id", "topic", "messages", "new_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEW_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    topic: str
    messages: _containers.RepeatedCompositeFieldContainer[PublishItem]
    new_ids: bool
    def __init__(self, request_id: _Optional[int] = ..., topic: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[PublishItem, _Mapping]]] = ..., new_ids: _Optional[bool] = ...) -> None: ...

class PublishError(_message.Message):
    __slots__ = ("code", "message", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PublishStreamResponse(_message.Message):
    __slots__ = ("request_id", "ids", "copies", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    copies: int
    error: PublishError
    def __init__(self, request_id: _Optional[int] = ..., ids: _Optional[_Iterable[bytes]] = ..., copies: _Optional[int] = ..., error: _Optional[_Union[PublishError, _Mapping]] = ...) -> None: ...

class SubscribeIdentify(_message.Message):
    __slots__ = ("topic", "channel", "client_id", "hostname", "user_agent", "msg_timeout_ms", "heartbeat_interval_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    MSG_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    client_id: str
    hostname: str
    user_agent: str
    msg_timeout_ms: int
    heartbeat_interval_ms: int
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ..., client_id: _Optional[str] = ..., hostname: _Optional[str] = ..., user_agent: _Optional[str] = ..., msg_timeout_ms: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class SubscribeReady(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class SubscribeFinish(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SubscribeRequeue(_message.Message):
    __slots__ = ("ids", "delay_ms")
    IDS_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    delay_ms: int
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class SubscribeTouch(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("identify", "ready", "finish", "requeue", "touch", "close", "nop")
    IDENTIFY_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    REQUEUE_FIELD_NUMBER: _ClassVar[int]
    TOUCH_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    NOP_FIELD_NUMBER: _ClassVar[int]
    identify: SubscribeIdentify
    ready: SubscribeReady
    finish: SubscribeFinish
    requeue: SubscribeRequeue
    touch: SubscribeTouch
    close: bool
    nop: bool
    def __init__(self, identify: _Optional[_Union[SubscribeIdentify, _Mapping]] = ..., ready: _Optional[_Union[SubscribeReady, _Mapping]] = ..., finish: _Optional[_Union[SubscribeFinish, _Mapping]] = ..., requeue: _Optional[_Union[SubscribeRequeue, _Mapping]] = ..., touch: _Optional[_Union[SubscribeTouch, _Mapping]] = ..., close: _Optional[bool] = ..., nop: _Optional[bool] = ...) -> None: ...

class SubscribeAccepted(_message.Message):
    __slots__ = ("broker_id", "max_rdy_count", "msg_timeout_ms", "heartbeat_interval_ms", "max_attempts", "limits")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RDY_COUNT_FIELD_NUMBER: _ClassVar[int]
    MSG_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    broker_id: str
    max_rdy_count: int
    msg_timeout_ms: int
    heartbeat_interval_ms: int
    max_attempts: int
    limits: BrokerLimits
    def __init__(self, broker_id: _Optional[str] = ..., max_rdy_count: _Optional[int] = ..., msg_timeout_ms: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., max_attempts: _Optional[int] = ..., limits: _Optional[_Union[BrokerLimits, _Mapping]] = ...) -> None: ...

class SubscribeDeliveries(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class SubscribeError(_message.Message):
    __slots__ = ("code", "message", "ids")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("accepted", "deliveries", "heartbeat", "error")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    accepted: SubscribeAccepted
    deliveries: SubscribeDeliveries
    heartbeat: bool
    error: SubscribeError
    def __init__(self, accepted: _Optional[_Union[SubscribeAccepted, _Mapping]] = ..., deliveries: _Optional[_Union[SubscribeDeliveries, _Mapping]] = ..., heartbeat: _Optional[bool] = ..., error: _Optional[_Union[SubscribeError, _Mapping]] = ...) -> None: ...

class CreateTopicRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class CreateTopicResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteTopicRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class DeleteTopicResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmptyTopicRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class EmptyTopicResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseTopicRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class PauseTopicResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnpauseTopicRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class UnpauseTopicResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateChannelRequest(_message.Message):
    __slots__ = ("topic", "channel")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class CreateChannelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteChannelRequest(_message.Message):
    __slots__ = ("topic", "channel")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class DeleteChannelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmptyChannelRequest(_message.Message):
    __slots__ = ("topic", "channel")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class EmptyChannelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseChannelRequest(_message.Message):
    __slots__ = ("topic", "channel")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class PauseChannelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnpauseChannelRequest(_message.Message):
    __slots__ = ("topic", "channel")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class UnpauseChannelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientStats(_message.Message):
    __slots__ = ("client_id", "hostname", "user_agent", "remote_address", "ready_count", "in_flight", "message_count", "finish_count", "requeue_count", "connected_at_ns")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    READY_COUNT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINISH_COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    hostname: str
    user_agent: str
    remote_address: str
    ready_count: int
    in_flight: int
    message_count: int
    finish_count: int
    requeue_count: int
    connected_at_ns: int
    def __init__(self, client_id: _Optional[str] = ..., hostname: _Optional[str] = ..., user_agent: _Optional[str] = ..., remote_address: _Optional[str] = ..., ready_count: _Optional[int] = ..., in_flight: _Optional[int] = ..., message_count: _Optional[int] = ..., finish_count: _Optional[int] = ..., requeue_count: _Optional[int] = ..., connected_at_ns: _Optional[int] = ...) -> None: ...

class ChannelStats(_message.Message):
    __slots__ = ("name", "depth", "in_flight", "deferred", "requeued", "timed_out", "dead_lettered", "message_count", "paused", "ephemeral", "clients", "finished")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    name: str
    depth: int
    in_flight: int
    deferred: int
    requeued: int
    timed_out: int
    dead_lettered: int
    message_count: int
    paused: bool
    ephemeral: bool
    clients: _containers.RepeatedCompositeFieldContainer[ClientStats]
    finished: int
    def __init__(self, name: _Optional[str] = ..., depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., deferred: _Optional[int] = ..., requeued: _Optional[int] = ..., timed_out: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., message_count: _Optional[int] = ..., paused: _Optional[bool] = ..., ephemeral: _Optional[bool] = ..., clients: _Optional[_Iterable[_Union[ClientStats, _Mapping]]] = ..., finished: _Optional[int] = ...) -> None: ...

class TopicStats(_message.Message):
    __slots__ = ("name", "depth", "message_count", "paused", "ephemeral", "channels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    depth: int
    message_count: int
    paused: bool
    ephemeral: bool
    channels: _containers.RepeatedCompositeFieldContainer[ChannelStats]
    def __init__(self, name: _Optional[str] = ..., depth: _Optional[int] = ..., message_count: _Optional[int] = ..., paused: _Optional[bool] = ..., ephemeral: _Optional[bool] = ..., channels: _Optional[_Iterable[_Union[ChannelStats, _Mapping]]] = ...) -> None: ...

class PairStats(_message.Message):
    __slots__ = ("pair", "partner_address", "partner_id", "connected", "lease_remaining_ms", "solo", "epoch", "replication_lag", "standby_messages", "min_copies", "takeovers", "partner_connected", "link", "refill_sending", "refill_receiving", "auth_failures")
    PAIR_FIELD_NUMBER: _ClassVar[int]
    PARTNER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PARTNER_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    SOLO_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_LAG_FIELD_NUMBER: _ClassVar[int]
    STANDBY_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MIN_COPIES_FIELD_NUMBER: _ClassVar[int]
    TAKEOVERS_FIELD_NUMBER: _ClassVar[int]
    PARTNER_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    REFILL_SENDING_FIELD_NUMBER: _ClassVar[int]
    REFILL_RECEIVING_FIELD_NUMBER: _ClassVar[int]
    AUTH_FAILURES_FIELD_NUMBER: _ClassVar[int]
    pair: str
    partner_address: str
    partner_id: str
    connected: bool
    lease_remaining_ms: int
    solo: bool
    epoch: int
    replication_lag: int
    standby_messages: int
    min_copies: int
    takeovers: int
    partner_connected: bool
    link: str
    refill_sending: int
    refill_receiving: int
    auth_failures: int
    def __init__(self, pair: _Optional[str] = ..., partner_address: _Optional[str] = ..., partner_id: _Optional[str] = ..., connected: _Optional[bool] = ..., lease_remaining_ms: _Optional[int] = ..., solo: _Optional[bool] = ..., epoch: _Optional[int] = ..., replication_lag: _Optional[int] = ..., standby_messages: _Optional[int] = ..., min_copies: _Optional[int] = ..., takeovers: _Optional[int] = ..., partner_connected: _Optional[bool] = ..., link: _Optional[str] = ..., refill_sending: _Optional[int] = ..., refill_receiving: _Optional[int] = ..., auth_failures: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("topic", "channel", "no_clients")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NO_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    no_clients: bool
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ..., no_clients: _Optional[bool] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("broker_id", "version", "start_time_ns", "health", "topics", "store_bytes", "store_cap_bytes", "pair", "integrity", "limits")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    STORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_CAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    broker_id: str
    version: str
    start_time_ns: int
    health: str
    topics: _containers.RepeatedCompositeFieldContainer[TopicStats]
    store_bytes: int
    store_cap_bytes: int
    pair: PairStats
    integrity: IntegrityStats
    limits: BrokerLimits
    def __init__(self, broker_id: _Optional[str] = ..., version: _Optional[str] = ..., start_time_ns: _Optional[int] = ..., health: _Optional[str] = ..., topics: _Optional[_Iterable[_Union[TopicStats, _Mapping]]] = ..., store_bytes: _Optional[int] = ..., store_cap_bytes: _Optional[int] = ..., pair: _Optional[_Union[PairStats, _Mapping]] = ..., integrity: _Optional[_Union[IntegrityStats, _Mapping]] = ..., limits: _Optional[_Union[BrokerLimits, _Mapping]] = ...) -> None: ...

class BrokerLimits(_message.Message):
    __slots__ = ("max_msg_size", "max_batch", "max_batch_bytes", "max_defer_ms", "max_msg_timeout_ms", "msg_timeout_ms", "max_rdy_count", "max_rdy_total", "idempotency_window_s", "max_publish_rate", "max_topics", "max_channels", "max_clients", "max_attempts", "heartbeat_interval_ms", "min_heartbeat_interval_ms", "max_heartbeat_interval_ms", "max_header_bytes")
    MAX_MSG_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DEFER_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MSG_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MSG_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_RDY_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_RDY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    MAX_PUBLISH_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOPICS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_HEADER_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_msg_size: int
    max_batch: int
    max_batch_bytes: int
    max_defer_ms: int
    max_msg_timeout_ms: int
    msg_timeout_ms: int
    max_rdy_count: int
    max_rdy_total: int
    idempotency_window_s: int
    max_publish_rate: int
    max_topics: int
    max_channels: int
    max_clients: int
    max_attempts: int
    heartbeat_interval_ms: int
    min_heartbeat_interval_ms: int
    max_heartbeat_interval_ms: int
    max_header_bytes: int
    def __init__(self, max_msg_size: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_batch_bytes: _Optional[int] = ..., max_defer_ms: _Optional[int] = ..., max_msg_timeout_ms: _Optional[int] = ..., msg_timeout_ms: _Optional[int] = ..., max_rdy_count: _Optional[int] = ..., max_rdy_total: _Optional[int] = ..., idempotency_window_s: _Optional[int] = ..., max_publish_rate: _Optional[int] = ..., max_topics: _Optional[int] = ..., max_channels: _Optional[int] = ..., max_clients: _Optional[int] = ..., max_attempts: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., min_heartbeat_interval_ms: _Optional[int] = ..., max_heartbeat_interval_ms: _Optional[int] = ..., max_header_bytes: _Optional[int] = ...) -> None: ...

class IntegrityStats(_message.Message):
    __slots__ = ("checksum_failures", "repairs", "quarantined", "scrub_running", "scrub_checked", "last_scrub_ns", "last_scrub_bad", "missing_records")
    CHECKSUM_FAILURES_FIELD_NUMBER: _ClassVar[int]
    REPAIRS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    SCRUB_RUNNING_FIELD_NUMBER: _ClassVar[int]
    SCRUB_CHECKED_FIELD_NUMBER: _ClassVar[int]
    LAST_SCRUB_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_SCRUB_BAD_FIELD_NUMBER: _ClassVar[int]
    MISSING_RECORDS_FIELD_NUMBER: _ClassVar[int]
    checksum_failures: int
    repairs: int
    quarantined: int
    scrub_running: bool
    scrub_checked: int
    last_scrub_ns: int
    last_scrub_bad: int
    missing_records: int
    def __init__(self, checksum_failures: _Optional[int] = ..., repairs: _Optional[int] = ..., quarantined: _Optional[int] = ..., scrub_running: _Optional[bool] = ..., scrub_checked: _Optional[int] = ..., last_scrub_ns: _Optional[int] = ..., last_scrub_bad: _Optional[int] = ..., missing_records: _Optional[int] = ...) -> None: ...

class ScrubRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScrubProgress(_message.Message):
    __slots__ = ("checked", "bytes", "bad", "done")
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BAD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    checked: int
    bytes: int
    bad: int
    done: bool
    def __init__(self, checked: _Optional[int] = ..., bytes: _Optional[int] = ..., bad: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("topic", "channel", "limit")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    limit: int
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("messages", "total")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    total: int
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class ReplayDeadLettersRequest(_message.Message):
    __slots__ = ("topic", "channel", "ids")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ..., ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ReplayDeadLettersResponse(_message.Message):
    __slots__ = ("replayed",)
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    replayed: int
    def __init__(self, replayed: _Optional[int] = ...) -> None: ...

class PeekMessagesRequest(_message.Message):
    __slots__ = ("topic", "channel", "limit")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    limit: int
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class PeekMessagesResponse(_message.Message):
    __slots__ = ("messages", "depth")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    depth: int
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., depth: _Optional[int] = ...) -> None: ...

class PurgeDeadLettersRequest(_message.Message):
    __slots__ = ("topic", "channel", "ids")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ..., ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PurgeDeadLettersResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...
