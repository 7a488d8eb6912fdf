"""The worker side of drover: readiness by notification, a keep-alive drain for uvicorn, and the
preload fork server. `drover-uvicorn` (drover_worker.cli) puts them together."""

__version__ = "0.1.0"
