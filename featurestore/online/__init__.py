"""The online store: writing feature rows in Feast's online layout and reading them back.

Writers: a fast Redis path (`redis_writer`, with `feast_layout` and `resp` encoding whole Arrow
columns) and Feast's own writer for every other store (`feast_writer`). Readers: the read plans
resolved once from the registry (`catalog`), the lookups of the API (`lookup`, over the asyncio
Redis client `redis_pool`) and the decoding of stored values (`values`).
"""
