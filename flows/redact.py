"""Prefect flows whose run parameters are stored with credentials redacted.

Prefect stores a flow run's parameters (``Flow.serialize_parameters``) in its database, shows them in the
UI and copies them to workers. rgi refuses URLs with embedded credentials inside the flow
(:func:`rgi_core.io.fs.require_no_credentials`), but the parameters are stored before the flow body runs;
:class:`RedactingFlow` scrubs them on the way out (:func:`rgi_core.io.fs.redact_text` on every string), so
even a refused run leaves no secret in the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Flow

from rgi_core.io.fs import redact_text


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


class RedactingFlow(Flow):
    """A :class:`prefect.Flow` that stores its parameters with credentials redacted."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        return _redact(super().serialize_parameters(parameters))

    def with_options(self, **kwargs: Any) -> RedactingFlow:
        new = super().with_options(**kwargs)
        new.__class__ = type(self)  # Prefect builds a plain Flow; keep the redaction
        return new


def redacting_flow(**kwargs: Any) -> Callable[[Callable], RedactingFlow]:
    """``@redacting_flow(name=..., log_prints=True)``: like ``@prefect.flow`` with :class:`RedactingFlow`."""
    return lambda fn: RedactingFlow(fn=fn, **kwargs)
