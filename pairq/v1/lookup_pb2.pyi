from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Liveness(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIVENESS_UNSPECIFIED: _ClassVar[Liveness]
    LIVENESS_ALIVE: _ClassVar[Liveness]
    LIVENESS_SUSPECT: _ClassVar[Liveness]
    LIVENESS_DEAD: _ClassVar[Liveness]
LIVENESS_UNSPECIFIED: Liveness
LIVENESS_ALIVE: Liveness
LIVENESS_SUSPECT: Liveness
LIVENESS_DEAD: Liveness

class BrokerIdentity(_message.Message):
    __slots__ = ("node_id", "pair", "grpc_address", "gossip_address", "version", "partner_address", "hostname", "start_time_ns", "nsq_tcp_address", "http_address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTNER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    NSQ_TCP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    pair: str
    grpc_address: str
    gossip_address: str
    version: str
    partner_address: str
    hostname: str
    start_time_ns: int
    nsq_tcp_address: str
    http_address: str
    def __init__(self, node_id: _Optional[str] = ..., pair: _Optional[str] = ..., grpc_address: _Optional[str] = ..., gossip_address: _Optional[str] = ..., version: _Optional[str] = ..., partner_address: _Optional[str] = ..., hostname: _Optional[str] = ..., start_time_ns: _Optional[int] = ..., nsq_tcp_address: _Optional[str] = ..., http_address: _Optional[str] = ...) -> None: ...

class TopicRegistration(_message.Message):
    __slots__ = ("name", "channels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    channels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., channels: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterHello(_message.Message):
    __slots__ = ("broker", "topics")
    BROKER_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    broker: BrokerIdentity
    topics: _containers.RepeatedCompositeFieldContainer[TopicRegistration]
    def __init__(self, broker: _Optional[_Union[BrokerIdentity, _Mapping]] = ..., topics: _Optional[_Iterable[_Union[TopicRegistration, _Mapping]]] = ...) -> None: ...

class RegisterState(_message.Message):
    __slots__ = ("topics",)
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedCompositeFieldContainer[TopicRegistration]
    def __init__(self, topics: _Optional[_Iterable[_Union[TopicRegistration, _Mapping]]] = ...) -> None: ...

class RegisterHeartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("seq", "hello", "state", "heartbeat")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hello: RegisterHello
    state: RegisterState
    heartbeat: RegisterHeartbeat
    def __init__(self, seq: _Optional[int] = ..., hello: _Optional[_Union[RegisterHello, _Mapping]] = ..., state: _Optional[_Union[RegisterState, _Mapping]] = ..., heartbeat: _Optional[_Union[RegisterHeartbeat, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("seq", "lookup_id", "heartbeat_interval_ms", "inactivity_timeout_ms")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    INACTIVITY_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    lookup_id: str
    heartbeat_interval_ms: int
    inactivity_timeout_ms: int
    def __init__(self, seq: _Optional[int] = ..., lookup_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., inactivity_timeout_ms: _Optional[int] = ...) -> None: ...

class BrokerStatus(_message.Message):
    __slots__ = ("broker", "liveness", "gossip_state", "connected", "last_seen_ms_ago")
    BROKER_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_AGO_FIELD_NUMBER: _ClassVar[int]
    broker: BrokerIdentity
    liveness: Liveness
    gossip_state: str
    connected: bool
    last_seen_ms_ago: int
    def __init__(self, broker: _Optional[_Union[BrokerIdentity, _Mapping]] = ..., liveness: _Optional[_Union[Liveness, str]] = ..., gossip_state: _Optional[str] = ..., connected: _Optional[bool] = ..., last_seen_ms_ago: _Optional[int] = ...) -> None: ...

class TopicBroker(_message.Message):
    __slots__ = ("status", "tombstoned", "has_topic")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONED_FIELD_NUMBER: _ClassVar[int]
    HAS_TOPIC_FIELD_NUMBER: _ClassVar[int]
    status: BrokerStatus
    tombstoned: bool
    has_topic: bool
    def __init__(self, status: _Optional[_Union[BrokerStatus, _Mapping]] = ..., tombstoned: _Optional[bool] = ..., has_topic: _Optional[bool] = ...) -> None: ...

class TopicPair(_message.Message):
    __slots__ = ("pair", "brokers")
    PAIR_FIELD_NUMBER: _ClassVar[int]
    BROKERS_FIELD_NUMBER: _ClassVar[int]
    pair: str
    brokers: _containers.RepeatedCompositeFieldContainer[TopicBroker]
    def __init__(self, pair: _Optional[str] = ..., brokers: _Optional[_Iterable[_Union[TopicBroker, _Mapping]]] = ...) -> None: ...

class LookupTopicRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class LookupTopicResponse(_message.Message):
    __slots__ = ("known", "channels", "pairs")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    known: bool
    channels: _containers.RepeatedScalarFieldContainer[str]
    pairs: _containers.RepeatedCompositeFieldContainer[TopicPair]
    def __init__(self, known: _Optional[bool] = ..., channels: _Optional[_Iterable[str]] = ..., pairs: _Optional[_Iterable[_Union[TopicPair, _Mapping]]] = ...) -> None: ...

class ListTopicsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTopicsResponse(_message.Message):
    __slots__ = ("topics",)
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topics: _Optional[_Iterable[str]] = ...) -> None: ...

class ListChannelsRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class ListChannelsResponse(_message.Message):
    __slots__ = ("channels",)
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, channels: _Optional[_Iterable[str]] = ...) -> None: ...

class Tombstone(_message.Message):
    __slots__ = ("topic", "expires_in_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    expires_in_ms: int
    def __init__(self, topic: _Optional[str] = ..., expires_in_ms: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("status", "topics", "tombstones", "registered_ms_ago")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MS_AGO_FIELD_NUMBER: _ClassVar[int]
    status: BrokerStatus
    topics: _containers.RepeatedCompositeFieldContainer[TopicRegistration]
    tombstones: _containers.RepeatedCompositeFieldContainer[Tombstone]
    registered_ms_ago: int
    def __init__(self, status: _Optional[_Union[BrokerStatus, _Mapping]] = ..., topics: _Optional[_Iterable[_Union[TopicRegistration, _Mapping]]] = ..., tombstones: _Optional[_Iterable[_Union[Tombstone, _Mapping]]] = ..., registered_ms_ago: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "lookup_id", "gossip_enabled")
    NODES_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_ID_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_ENABLED_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    lookup_id: str
    gossip_enabled: bool
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., lookup_id: _Optional[str] = ..., gossip_enabled: _Optional[bool] = ...) -> None: ...

class CreateTopicRegistrationRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class CreateTopicRegistrationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteTopicRegistrationRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class DeleteTopicRegistrationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateChannelRegistrationRequest(_message.Message):
    __slots__ = ("topic", "channel")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class CreateChannelRegistrationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteChannelRegistrationRequest(_message.Message):
    __slots__ = ("topic", "channel")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    channel: str
    def __init__(self, topic: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class DeleteChannelRegistrationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TombstoneTopicRequest(_message.Message):
    __slots__ = ("topic", "node")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    node: str
    def __init__(self, topic: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class TombstoneTopicResponse(_message.Message):
    __slots__ = ("node_id", "expires_in_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    expires_in_ms: int
    def __init__(self, node_id: _Optional[str] = ..., expires_in_ms: _Optional[int] = ...) -> None: ...
