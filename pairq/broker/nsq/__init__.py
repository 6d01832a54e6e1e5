"""NSQ compatibility on the broker (issue 17), so unchanged NSQ clients and tools work.

* ``--nsq-tcp-address``: NSQ's TCP protocol V2 (``tcp.py`` serves it, ``protocol.py``
  is the pure codec), for pynsq, nsqjs and go-nsq producers and consumers.
* ``--http-address``: nsqd's HTTP API (``http.py``): ``/pub``, ``/mpub``, ``/dpub``,
  ``/stats``, ``/ping``, ``/info`` and the topic and channel actions.

Both are adapters at the edge: a publish goes through the broker's ``Publisher``
(pair durability, like any other publish) and a subscription is a channel
subscriber like a gRPC ``Subscribe`` stream.
"""
