"""Typed payloads: ``@task(model=SomeModel)`` with a pydantic model (the
``angela-queue[pydantic]`` extra).

The payload is validated against the model at enqueue, stored as the
model's JSON form, and validated again in the worker, whose handler gets the
model instance. pydantic is imported by the user's own model, never here: a
model class is duck-typed by the two methods used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_model(model: object) -> None:
    if not isinstance(model, type) or not hasattr(model, "model_validate") or not hasattr(model, "model_dump"):
        raise ValueError(f"model must be a pydantic model class (a BaseModel subclass; got {model!r}); "
                         "install the extra with: pip install 'angela-queue[pydantic]'")


def payload_for_storage(model: type, payload: Any) -> dict[str, Any]:
    """The payload as stored: validated (raises pydantic's ValidationError, a
    ValueError), in its JSON form. Takes a model instance or a mapping."""
    instance = payload if isinstance(payload, model) else model.model_validate(  # type: ignore[attr-defined]
        dict(payload) if isinstance(payload, Mapping) else payload)
    return instance.model_dump(mode="json")


def instance_for_handler(model: type, payload: dict[str, Any]) -> Any:
    return model.model_validate(payload)  # type: ignore[attr-defined]
