"""Reading an uploaded file within the front's upload limit (the body limit has already
refused a larger multipart body; this bounds one file within it)."""

from __future__ import annotations

from fastapi import Request, UploadFile

from services.http.errors import ApiError


async def read_upload(upload: UploadFile, request: Request) -> bytes:
    limit = request.app.state.config.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "payload_too_large",
                       f"{upload.filename or 'the upload'} exceeds {limit} bytes (COSYVOICE_HTTP_MAX_UPLOAD_BYTES)")
    if not data:
        raise ApiError(400, "invalid_argument", f"the uploaded file {upload.filename or '(unnamed)'} is empty")
    return data
