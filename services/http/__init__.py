"""The HTTP front (docs/http.md): FastAPI over the gateway's public gRPC API. No torch here."""
