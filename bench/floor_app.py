"""The framework floor of the serving benchmark: a bare FastAPI endpoint doing one pipelined Redis read.

It reads the same hashes and fields as a `fraud_detection_v1` lookup (one HMGET per card and per
merchant, through redis-py's asyncio pipeline) and answers with the number of values found: no
auth, no validation beyond JSON, no decoding, no on-demand features. Run by bench/serving.py as
`uvicorn floor_app:create_app --factory` with the same worker count as the others.
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import Response

from featurestore.feast_config import feature_store
from featurestore.online.catalog import Catalog
from featurestore.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    plan = Catalog(feature_store(settings)).plan_for_service("fraud_detection_v1")
    reads = [
        (read.layout, [f for v in read.views for f in (*v.fields, v.ts_field)])
        for read in plan.entities
    ]
    client = aioredis.Redis.from_url(settings.redis_url)
    app = FastAPI()

    @app.post("/lookup")
    async def lookup(request: Request) -> Response:
        entities = orjson.loads(await request.body())["entities"]
        pipe = client.pipeline(transaction=False)
        for layout, fields in reads:
            for key in layout.keys_for(entities):
                pipe.hmget(key, fields)
        replies = await pipe.execute()
        found = sum(v is not None for row in replies for v in row)
        return Response(orjson.dumps({"values": found}), media_type="application/json")

    return app
