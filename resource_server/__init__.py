"""The example protected gRPC service, built only from interceptors/ and protos/."""

from resource_server.app import (
    ResourceServerConfig,
    StartupError,
    build_server,
    open_verifier,
    resource_policy,
    start_aio_server,
)
from resource_server.service import (
    AsyncResourceServicer,
    ResourceLogic,
    ResourceServicer,
)

__all__ = [
    "AsyncResourceServicer",
    "ResourceLogic",
    "ResourceServerConfig",
    "ResourceServicer",
    "StartupError",
    "build_server",
    "open_verifier",
    "resource_policy",
    "start_aio_server",
]
