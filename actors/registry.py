"""The workflows and activities a runtime hosts, by name."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from perdure.runtime.errors import ConfigurationError

from .definitions import ActivityDefinition, WorkflowDefinition


class Registry:
    def __init__(self, items: Iterable[Any] = ()) -> None:
        self.workflows: dict[str, WorkflowDefinition[Any, Any]] = {}
        self.activities: dict[str, ActivityDefinition[Any, Any]] = {}
        for item in items:
            self.add(item)

    def add(self, item: Any) -> None:
        if isinstance(item, WorkflowDefinition):
            self._put(self.workflows, "workflow", item.name, item)
        elif isinstance(item, ActivityDefinition):
            self._put(self.activities, "activity", item.name, item)
        else:
            raise ConfigurationError(f"{item!r} is neither a @workflow nor an @activity")

    @staticmethod
    def _put(table: dict[str, Any], kind: str, name: str, item: Any) -> None:
        existing = table.get(name)
        if existing is not None and existing is not item:
            raise ConfigurationError(f"two different {kind}s are named {name!r}")
        table[name] = item

    def workflow(self, name: str) -> WorkflowDefinition[Any, Any] | None:
        return self.workflows.get(name)

    @classmethod
    def from_targets(cls, targets: Iterable[str]) -> Registry:
        """``module``, ``module:attr`` or ``path/to/file.py[:attr]``: everything decorated found there."""
        registry = cls()
        for target in targets:
            module_name, _, attr = target.partition(":")
            module = _import(module_name)
            if attr:
                value = getattr(module, attr, None)
                if value is None:
                    raise ConfigurationError(f"{module_name} has no attribute {attr!r}")
                for item in value if isinstance(value, list | tuple) else [value]:
                    registry.add(item)
            else:
                for value in vars(module).values():
                    if isinstance(value, WorkflowDefinition | ActivityDefinition):
                        registry.add(value)
        if not registry.workflows and not registry.activities:
            raise ConfigurationError(f"no @workflow or @activity found in {', '.join(targets)}")
        return registry


def _import(name: str) -> Any:
    """Import a target; a module that fails to import is one line naming its file and line."""
    try:
        return _import_unchecked(name)
    except ConfigurationError:
        raise
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else name
        raise ConfigurationError(f"cannot import {name}: {where}: syntax error: {exc.msg}") from None
    except Exception as exc:
        raise ConfigurationError(f"cannot import {name}: {_where(exc)}{type(exc).__name__}: {exc}") from None


def _where(exc: BaseException) -> str:
    """``file:line: `` of the innermost frame outside importlib (the user's failing line)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    frames = [f for f in frames if f.filename != __file__]
    return f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""


def _import_unchecked(name: str) -> Any:
    if name.endswith(".py") or "/" in name:
        path = Path(name).resolve()
        if not path.is_file():
            raise ConfigurationError(f"cannot import {name}: no such file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ConfigurationError(f"cannot import {name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(path.stem, None)
            raise
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):  # the target
            raise ConfigurationError(f"cannot import {name}: no module named {exc.name!r}") from None
        raise
