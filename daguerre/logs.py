"""Structured logs: one JSON object per line, with taskUUID when the record carries one."""

from __future__ import annotations

import json
import logging
import time


class JsonFormatter(logging.Formatter):
    """Formats records as JSON lines: time, level, logger, message, taskUUID, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_uuid = getattr(record, "taskUUID", None)
        if task_uuid:
            out["taskUUID"] = task_uuid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "info") -> None:
    """Route daguerre's and uvicorn's logs to stderr as JSON lines; called once by `daguerre serve`."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("daguerre", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def quiet_libraries() -> None:
    """Turn off diffusers' and transformers' per-file loading bars ("Loading weights", "Loading pipeline
    components"): Daguerre reports its own progress. Called once by each entry point (CLI, server, benches)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
