"""REST routes: POST /v1 (Runware tasks) and the signed image links GET /v1/images/<uuid>.<ext>."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from daguerre.api.deps import (
    Services,
    check_json_type,
    error_response,
    in_thread,
    parse_json,
    parse_tasks,
    read_capped,
)
from daguerre.api.intake import ProtocolError
from daguerre.api.openapi import tasks_schema
from daguerre.api.runware import Reply, Running, error_item
from daguerre.errors import DaguerreError
from daguerre.imaging import CONTENT_TYPES

router = APIRouter()

NOT_FOUND = {"errors": [{"code": "notFound", "message": "no such image or link expired"}]}


@router.post(
    "/v1",
    summary="Run tasks (JSON array of Runware tasks)",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": tasks_schema()}}},
        "responses": {
            "200": {"description": '{"data": [result items]} and, for failed tasks, "errors"'},
            "400": {"description": '{"errors": [{"code", "message", "parameter", "taskType", "taskUUID"}]}'},
            "401": {"description": "missingApiKey / invalidApiKey"},
            "404": {"description": "taskNotFound / imageNotFound"},
            "413": {"description": "payloadTooLarge"},
            "415": {"description": "unsupportedMediaType: the body must be application/json"},
            "429": {"description": "queueFull (Retry-After)"},
            "503": {"description": "serverShuttingDown"},
        },
    },
)
async def tasks(request: Request, services: Services):
    runware, server = services.runware, services.settings.server
    # 1. Body: JSON typed, capped, a list of task objects.
    try:
        check_json_type(request.headers.get("content-type"))
        body = await read_capped(request, server.max_body_bytes)
        batch = parse_tasks(body)
        del body
    except ProtocolError as e:
        return error_response([error_item(e, None)], e.code)
    # 2. Authentication: Bearer header, or a leading authentication task.
    key = _bearer(request)
    if batch[0].get("taskType") == "authentication":
        key = key or batch[0].get("apiKey")
    try:
        owner = runware.intake.authenticate(key)
    except ProtocolError as e:
        return error_response([error_item(e, batch[0])], e.code)
    # 3. Each task in order; errors are per task. A sync task waits (up to sync_wait_s), then goes on async.
    reply = Reply()
    for task in batch:
        if task.get("taskType") == "authentication":
            continue
        try:
            outcome = await in_thread(runware.handle, owner, task)
            if isinstance(outcome, Running):
                job = await runware.intake.wait(outcome.job, server.sync_wait_s)
                # Past the wait cap the task goes on async: processing items tell the client to poll getResponse.
                outcome = runware.reply_for(job, with_status=not job.done)
        except DaguerreError as e:
            reply.errors.append(error_item(e, task))
            continue
        reply.data.extend(outcome.data)
        reply.errors.extend(outcome.errors)
    code = reply.errors[0]["code"] if reply.errors and not reply.data else None
    return error_response(reply.errors, code, reply) if code else JSONResponse(reply.body())


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def _owner(request: Request, services) -> str:
    return services.runware.intake.authenticate(_bearer(request))


@router.get("/v1/gallery", summary="This key's finished images with their recipes, newest first (Daguerre extension)")
async def gallery(request: Request, services: Services, limit: int = 50, before: int | None = None):
    try:
        owner = _owner(request, services)
        if not 1 <= limit <= 200:
            raise ProtocolError(f"limit must be 1-200, got {limit}", parameter="limit", code="invalidParameter")
        return JSONResponse(await in_thread(services.runware.gallery, owner, limit, before))
    except DaguerreError as e:
        return error_response([error_item(e, None)], e.code)


@router.delete("/v1/gallery/{task_uuid}", status_code=204,
               summary="Delete a finished task of this key and its images (Daguerre extension)")  # fmt: skip
async def forget(task_uuid: str, request: Request, services: Services):
    try:
        owner = _owner(request, services)
        if not await in_thread(services.runware.forget, owner, task_uuid):
            raise ProtocolError(f"no task {task_uuid} for this API key", parameter="taskUUID", code="taskNotFound")
    except DaguerreError as e:
        return error_response([error_item(e, None)], e.code)
    return Response(status_code=204)


def _characters(services):
    store = services.runware.intake.characters
    if store is None:
        raise ProtocolError("characters are not available on this server", parameter="character",
                            code="unsupportedParameter")  # fmt: skip
    return store


def _character_json(c) -> dict:
    return {"name": c.name, "anchor": c.anchor, "seed": c.seed, "createdAt": c.created_at}


@router.get("/v1/characters", summary="This key's saved characters (anchor + locked seed; Daguerre extension)")
async def characters(request: Request, services: Services):
    try:
        owner = _owner(request, services)
        found = await in_thread(_characters(services).list, owner)
        return JSONResponse({"data": [_character_json(c) for c in found]})
    except DaguerreError as e:
        return error_response([error_item(e, None)], e.code)


@router.post("/v1/characters", summary="Save a character {name, anchor, seed} for this key (Daguerre extension)")
async def save_character(request: Request, services: Services):
    from daguerre.jobs.characters import Character, check

    try:
        owner = _owner(request, services)
        check_json_type(request.headers.get("content-type"))
        body = parse_json(await read_capped(request, 64 * 1024))
        if not isinstance(body, dict):
            raise ProtocolError("the body must be a JSON object {name, anchor, seed}", code="invalidJSON")
        unknown = sorted(set(body) - {"name", "anchor", "seed"})
        if unknown:
            raise ProtocolError(f"unknown field {unknown[0]!r}", parameter=unknown[0], code="invalidParameter")
        name, anchor, seed = body.get("name"), body.get("anchor"), body.get("seed")
        check(name, anchor, seed)
        saved = await in_thread(_characters(services).put, owner, Character(name=name, anchor=anchor, seed=seed))
        return JSONResponse({"data": [_character_json(saved)]})
    except DaguerreError as e:
        return error_response([error_item(e, None)], e.code)


@router.delete("/v1/characters/{name}", status_code=204, summary="Delete a saved character (Daguerre extension)")
async def delete_character(name: str, request: Request, services: Services):
    try:
        owner = _owner(request, services)
        if not await in_thread(_characters(services).delete, owner, name):
            raise ProtocolError(f"no character {name!r} for this API key", parameter="character",
                                code="characterNotFound")  # fmt: skip
    except DaguerreError as e:
        return error_response([error_item(e, None)], e.code)
    return Response(status_code=204)


@router.get("/v1/images/{name}")
async def image(name: str, services: Services, exp: str = "0", sig: str = ""):
    # exp and sig are read as text and checked by the signer: a malformed link is a 404 like any bad link.
    image_uuid, _, ext = name.partition(".")
    if not services.signer.check(image_uuid, exp, sig):
        return JSONResponse(NOT_FOUND, status_code=404)
    found = services.results.get(image_uuid, None)
    if found is None or found[0].ext != ext:
        return JSONResponse(NOT_FOUND, status_code=404)
    return Response(found[1], media_type=CONTENT_TYPES[ext], headers={"Cache-Control": "private, max-age=3600"})
