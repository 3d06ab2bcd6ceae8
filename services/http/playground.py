"""The browser playground: `/` serves the page, `/static/*` its ES modules and style sheet.

Plain files with no build step and no external fetches, so the page works offline; everything it
does goes through the public HTTP API (the same calls a user's code would make)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    # no-cache: the page is tiny, and a stale app.js after an upgrade would call the old API.
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


router.mount("/static", StaticFiles(directory=STATIC_DIR), name="playground-static")
