"""/v1/files and /v1/batches (OpenAI's Files and Batch APIs): thin over the store and the batch jobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from serving.server.errors import APIError, bad_request, not_found
from serving.server.generate_routes import service_of
from serving.server.objects import page
from serving.server.protocol import parse_json
from serving.server.security import BodyTooLarge
from serving.server.service import ServerService

router = APIRouter()

PURPOSES = ("batch",)
CHUNK_BYTES = 1 << 20


def _limit(value: str | None, default: int, most: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise bad_request(f"'limit' must be an integer in 1..{most}.", "limit", "invalid_value")
    return int(value)


@router.post("/v1/files")
async def upload_file(request: Request) -> Any:
    """Upload a batch input file (multipart: file, purpose)."""
    service = service_of(request)
    form = await request.form(max_files=1, max_fields=8)
    purpose = form.get("purpose")
    upload = form.get("file")
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise bad_request(f"'purpose' must be one of {list(PURPOSES)}, got {purpose!r}.", "purpose", "invalid_value")
    if not isinstance(upload, UploadFile):
        raise bad_request("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    # The client's filename is metadata only: kept as its last path part, never used as a path.
    filename = os.path.basename((upload.filename or "upload.jsonl").replace("\\", "/"))[:255] or "upload.jsonl"
    written = await run_in_threadpool(_save_upload, service, upload)
    try:
        lines = await run_in_threadpool(_count_lines, written)
        if lines > service.config.max_file_lines:
            most = service.config.max_file_lines
            raise bad_request(
                f"The file has {lines} lines; a batch input may have at most {most}.", "file", "too_many_lines"
            )
        return await run_in_threadpool(service.store.add_file, written, filename, purpose)
    finally:
        written.unlink(missing_ok=True)


def _save_upload(service: ServerService, upload: UploadFile) -> Path:
    """Copy the upload under the store's tmp/ (413 past --max_upload_bytes)."""
    path = service.store.temp_path()
    most = service.config.max_upload_bytes
    size = 0
    source = upload.file
    source.seek(0)
    with path.open("wb") as target:
        while chunk := source.read(CHUNK_BYTES):
            size += len(chunk)
            if size > most:
                target.close()
                path.unlink(missing_ok=True)
                raise BodyTooLarge(most)
            target.write(chunk)
    return path


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        for line in handle:
            count += bool(line.strip())
    return count


@router.get("/v1/files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    after: str | None = None,
    limit: str | None = None,
    order: str = "desc",
) -> Any:
    """List files (newest first unless order=asc)."""
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'.", "order", "invalid_value")
    files, more = service_of(request).store.list_files(purpose, after, _limit(limit, 10_000, 10_000), order == "desc")
    return page(files, more)


def _file(service: ServerService, file_id: str) -> dict[str, Any]:
    file = service.store.get_file(file_id)
    if file is None:
        raise not_found(f"No such File object: {file_id}", "id")
    return file


@router.get("/v1/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> Any:
    """A File object."""
    return _file(service_of(request), file_id)


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Any:
    """A file's bytes."""
    service = service_of(request)
    file = _file(service, file_id)
    return FileResponse(service.store.file_path(file), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> Any:
    """Delete a file (not the input of a batch still running)."""
    service = service_of(request)
    _file(service, file_id)
    users = service.jobs.input_in_use(file_id)
    if users:
        raise APIError(409, f"File {file_id} is the input of batch {users[0]}, which is still running.", param="id")
    await run_in_threadpool(service.store.delete_file, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.post("/v1/batches")
async def create_batch(request: Request) -> Any:
    """Create a batch job from an uploaded file (endpoint /v1/chat/completions)."""
    body = parse_json(await request.body())
    return await run_in_threadpool(service_of(request).jobs.create, body)


@router.get("/v1/batches")
async def list_batches(request: Request, after: str | None = None, limit: str | None = None) -> Any:
    """List batches, newest first."""
    batches, more = await run_in_threadpool(service_of(request).jobs.list, after, _limit(limit, 20, 100))
    return page(batches, more)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> Any:
    """A batch object with live request counts."""
    return await run_in_threadpool(service_of(request).jobs.retrieve, batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Any:
    """Cancel a batch: its finished lines stay in its output file."""
    return await run_in_threadpool(service_of(request).jobs.cancel, batch_id)
