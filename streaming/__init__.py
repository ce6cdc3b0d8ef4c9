"""The stream engine: Kafka consumers that turn raw events into feature rows, exactly once in effect.

A worker (`worker`) consumes the source and repartition topics of a `topology`; each partition's
`task` validates events (`validation`), updates the incremental windows (`windows`) and
checkpoints its effects to the offline store and its partition log (`log`), the commit point.
A partition without a log takes its state over from the offline store (`coldstart`). Bad events
go to a dead-letter topic (`deadletter`). `reset` finds recreated or truncated topics (and
`stream reset` starts over after them), `producer` sends events, `broker` starts a local
Kafka-protocol broker, `metrics` counts what the worker does.
"""
