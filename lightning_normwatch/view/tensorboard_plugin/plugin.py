"""The ``normwatch`` TensorBoard plugin: a tab with the diagnosis, the depth x step heatmap and the selected tensor.

Installed with the package (entry point ``tensorboard_plugins``: ``normwatch``); TensorBoard finds it
when it starts. It reads only what NormWatch logs, through ``context.data_provider``, so it works on
runs written before it existed. Routes (under ``/data/plugin/normwatch/``), all JSON:

- ``runs``: the runs with NormWatch data;
- ``run?run=R``: tensors in execution order, the heatmap figures, the diagnosis, what was not measured;
- ``heatmap?run=R&figure=F[&columns=N]``: one figure, tensors x step bins (at most N columns);
- ``tensor?run=R&tensor=T``: the tensor's figures over steps with their thresholds, its alerts;
- ``histogram?run=R&tensor=T&step=S``: its histogram at S against the reference window.

A bad parameter gets HTTP 400 and ``{"error": message}``; the page is ``static/index.js``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.context import RequestContext
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from . import responses
from .data import BadRequest, RunData, Source, check_run, load_run, normwatch_runs

__all__ = ["NormWatchPlugin", "PLUGIN_NAME"]

PLUGIN_NAME = "normwatch"
_STATIC = os.path.join(os.path.dirname(__file__), "static")
#: the files the page is made of (served by name only: no path from the request reaches the disk)
STATIC_FILES = {
    "index.js": "text/javascript",
    "heatmap.js": "text/javascript",
    "charts.js": "text/javascript",
    "api.js": "text/javascript",
    "style.css": "text/css",
    "page.html": "text/html",
}
_log = logging.getLogger(__name__)


def _json_route(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A route answering JSON; ``BadRequest`` and TensorBoard's public errors become 4xx ``{"error": ...}``."""

    @functools.wraps(fn)
    def route(self: NormWatchPlugin, request: wrappers.Request) -> wrappers.Response:
        try:
            body, code = fn(self, request), 200
        except BadRequest as e:
            body, code = {"error": str(e)}, 400
        except errors.PublicError as e:
            body, code = {"error": str(e)}, e.http_code
        except Exception as e:  # never a stack trace or a path in the answer: the log has them
            _log.exception("normwatch plugin: %s failed", request.path)
            body, code = {"error": f"internal error ({type(e).__name__}); see the tensorboard log"}, 500
        return http_util.Respond(request, json.dumps(body, allow_nan=False), "application/json", code=code)

    return wrappers.Request.application(route)


def _int(request: wrappers.Request, name: str, default: int | None, lo: int, hi: int) -> int:
    text = request.args.get(name)
    if text is None:
        if default is None:
            raise BadRequest(f"missing parameter {name!r}")
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"parameter {name!r} must be an integer, got {text[:40]!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"parameter {name!r} must be between {lo} and {hi}, got {value}")
    return value


class NormWatchPlugin(base_plugin.TBPlugin):
    """TensorBoard's ``normwatch`` tab (see the module docstring)."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._provider = context.data_provider
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._active = False  # once a run has NormWatch data, the tab stays (listing every run is not free)

    def get_plugin_apps(self) -> dict[str, Callable[..., Any]]:
        return {
            "/static/*": self._serve_static,
            "/runs": self._serve_runs,
            "/run": self._serve_run,
            "/heatmap": self._serve_heatmap,
            "/tensor": self._serve_tensor,
            "/histogram": self._serve_histogram,
        }

    def is_active(self) -> bool:
        """Active when some run holds ``normwatch/<tensor>/<figure>`` scalars."""
        if self._provider is None:
            return False
        self._active = self._active or bool(normwatch_runs(Source(self._provider, RequestContext(), "")))
        return self._active

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/static/index.js", tab_name="NormWatch")

    def _cached(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = make()
        self._cache[key] = value
        while len(self._cache) > 32:
            self._cache.popitem(last=False)
        return value

    def _source(self, request: wrappers.Request) -> Source:
        if self._provider is None:
            raise BadRequest("TensorBoard has no data provider")
        return Source(self._provider, plugin_util.context(request.environ), plugin_util.experiment_id(request.environ))

    def _run(self, request: wrappers.Request) -> tuple[Source, RunData, tuple[Any, ...]]:
        """The requested run's index (cached until one of its series grows)."""
        src = self._source(request)
        name = request.args.get("run")
        runs = normwatch_runs(src, [name]) if name else {}
        run = check_run(runs or normwatch_runs(src), name)  # every run is listed only to name them in an error
        series = runs[run]
        texts = src.list("text", [run], kind="tensors").get(run, {})
        grown = max((s.max_step, s.max_wall_time) for s in [*series.values(), *texts.values()])
        stamp = (src.eid, run, len(series), len(texts), grown)
        return src, self._cached(("run", *stamp), lambda: load_run(src, run, series)), stamp

    def _tensor_arg(self, request: wrappers.Request, data: RunData) -> str:
        tensor = request.args.get("tensor")
        if not tensor:
            raise BadRequest("missing parameter 'tensor'")
        return data.tensor(tensor)["name"]

    @wrappers.Request.application
    def _serve_static(self, request: wrappers.Request) -> wrappers.Response:
        name = request.path.rsplit("/static/", 1)[-1]
        if name not in STATIC_FILES:
            return http_util.Respond(request, "not found", "text/plain", code=404)
        with open(os.path.join(_STATIC, name), "rb") as f:
            return http_util.Respond(request, f.read(), STATIC_FILES[name])

    @_json_route
    def _serve_runs(self, request: wrappers.Request) -> Any:
        runs = normwatch_runs(self._source(request))
        return {"runs": [{"run": r, "last_step": max(s.max_step for s in t.values())} for r, t in sorted(runs.items())]}

    @_json_route
    def _serve_run(self, request: wrappers.Request) -> Any:
        src, data, stamp = self._run(request)
        return self._cached(("summary", *stamp), lambda: responses.run_summary(src, data))

    @_json_route
    def _serve_heatmap(self, request: wrappers.Request) -> Any:
        src, data, stamp = self._run(request)
        figure = request.args.get("figure") or "scale"
        columns = _int(request, "columns", 400, 1, 5000)
        first = _int(request, "first", 0, 0, 10**6)
        count = _int(request, "count", 10**6, 1, 10**6)
        part = slice(first, first + count)
        return self._cached(
            ("heatmap", figure, columns, first, count, *stamp),
            lambda: responses.heatmap(src, data, figure, columns, part),
        )

    @_json_route
    def _serve_tensor(self, request: wrappers.Request) -> Any:
        src, data, _ = self._run(request)
        return responses.tensor_detail(src, data, self._tensor_arg(request, data))

    @_json_route
    def _serve_histogram(self, request: wrappers.Request) -> Any:
        src, data, _ = self._run(request)
        tensor = self._tensor_arg(request, data)
        step = _int(request, "step", data.last_step, -(2**62), 2**62)
        return responses.histogram(src, data, tensor, step)
