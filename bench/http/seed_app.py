"""The seed design's ``POST /process``, faithfully: the baseline of the HTTP accept benchmark.

FastAPI + a pydantic request model + ``BackgroundTasks`` + a module-level *synchronous*
redis-py client doing ``XADD ... MAXLEN ~ 100000``, and the 202 sent *before* the write
(see ../../../shared/seed/). Its defects are the point; do not fix them here.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

import orjson
from fastapi import BackgroundTasks, FastAPI, status
from pydantic import BaseModel
from redis import Redis


class ProcessRequest(BaseModel):
    url: str
    width: int
    height: int


app = FastAPI()
redis = Redis.from_url(os.environ["SEED_REDIS_URL"], decode_responses=True)
STREAM_NAME = "async_tasks"


@app.post("/process", status_code=status.HTTP_202_ACCEPTED)
async def create_task(data: ProcessRequest, background: BackgroundTasks) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    task_meta = {
        "id": task_id,
        "created_at": datetime.utcnow().isoformat(),
        "payload": data.model_dump(),
        "retry_count": 0,
    }
    background.add_task(
        dispatch_to_redis, stream=STREAM_NAME, payload=orjson.dumps(task_meta).decode()
    )
    return {"task_id": task_id, "status": "queued"}


def dispatch_to_redis(stream: str, payload: str) -> None:
    redis.xadd(name=stream, fields={"task": payload}, maxlen=100000, approximate=True)
