"""/healthz: this process is alive. /readyz: the gateway answers SERVING on gRPC health (a
load balancer sends traffic only then). Both open: probes hold no key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from services.http.errors import unavailable
from services.http.gateway_client import GatewayClient
from services.http.routes_common import ERROR_RESPONSES, gateway

router = APIRouter(tags=["Health"])


class Status(BaseModel):
    status: str


@router.get("/healthz", response_model=Status, summary="Liveness: the process answers")
async def healthz() -> Status:
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: ERROR_RESPONSES[503]},
            summary="Readiness: the gateway reports SERVING")
async def readyz(request: Request, client: GatewayClient = Depends(gateway)) -> Status:
    ok, why = await client.serving(request.app.state.config.ready_timeout_seconds)
    if not ok:
        raise unavailable(why)
    return Status(status="ready")
