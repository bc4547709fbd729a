"""The parameter side of a logging step: update sizes, gradients and weights, measured on the device.

On a logging step, right before an optimizer steps (Lightning's ``on_before_optimizer_step``, where
gradients are already unscaled under AMP; a plain loop's optimizer step pre-hook), ``UpdateProbe.before_step``
copies the parameters that optimizer holds and measures ``||W||`` and ``||g||`` with one ``_foreach_norm``
(both lists in one call); right after the step (an optimizer step post-hook, which only fires when the step
ran: a step that ``GradScaler`` skipped leaves no update, and is reported as skipped, not as a zero update),
``after_step`` subtracts the new weights from the copies in place, measures ``||W_old - W_new||`` (the norm
of the update) and drops the copies. Nothing is read on the host before
``collect`` at the end of the logging step: one transfer of one small tensor. Other steps cost a dict
lookup in the post-hook.

Figures per owner (a watched module, summed over its parameters; see ``owners``): ``update_ratio``
``||dW|| / ||W||``, ``grad_rms``, ``weight_rms``, ``param_numel``, ``lr`` (largest learning rate of the
param groups holding them) and ``has_grad`` (share of its parameters that received a gradient).
Under DDP gradients are already reduced and the weights are the same on every rank, so every rank
computes the single-process figures without any collective. FSDP shards parameters: the figures of a
rank would be of its shard only, so the probe is not used there (see docs/updates.md).

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> probe = UpdateProbe()
    >>> probe.attach(model, [opt])
    ['0', '2']
    >>> model(torch.randn(16, 4)).pow(2).mean().backward()
    >>> probe.arm()
    >>> probe.before_step(opt); opt.step(); probe.after_step(opt)
    >>> figs = probe.collect()
    >>> sorted(figs["0"])
    ['grad_rms', 'has_grad', 'lr', 'param_numel', 'update_ratio', 'weight_rms']
    >>> round(figs["0"]["lr"], 3), figs["0"]["param_numel"]
    (0.1, 40.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..stats.histogram import bin_counts, bin_edges
from .selection import Pattern, _matches, select_modules, user_name
from .through_time import TimeProbe

__all__ = ["UpdateProbe", "ParamEntry", "owners", "unheld_parameters", "histograms_by_owner"]

#: columns of the per-parameter block: ||W||, ||g|| (NaN without gradient), ||dW|| (NaN: no step seen)
_W, _G, _D = 0, 1, 2


@dataclass(frozen=True)
class ParamEntry:
    """One trainable parameter tensor: its qualified name, the owner its figures are summed into, its size."""

    name: str
    owner: str
    numel: int
    matrix: bool = False  # a weight matrix (2+ dims, not an embedding table): read by the gradient-flow rules


def owners(
    model: nn.Module, modules: Sequence[Pattern] | None = None, exclude: Sequence[Pattern] = ()
) -> dict[str, str]:
    """Owner of each trainable parameter (qualified name -> owner key), as the activations select modules.

    A parameter belongs to the deepest watched module containing it (``attn.out_proj.weight`` of a
    ``MultiheadAttention`` watched as a whole belongs to ``attn``). With the default selection a
    parameter outside every watched module (a positional embedding held by a container) is its own
    owner under its qualified name; with explicit ``modules`` it is not watched.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.MultiheadAttention(3, 1))
        >>> sorted(set(owners(model).values()))
        ['0', '1']
        >>> owners(model, modules=["0"])
        {'0.weight': '0', '0.bias': '0'}
        >>> sorted(set(owners(model, exclude=["1"]).values()))
        ['0']
    """
    watched = {name for name, _ in select_modules(model, modules, exclude)}
    excluded = {user_name(n) for n, m in model.named_modules() if n and exclude and _matches(user_name(n), m, exclude)}
    out: dict[str, str] = {}
    for qualified, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = user_name(qualified)
        parts = name.split(".")
        owner = next(
            (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in watched), None
        )
        inside_excluded = any(".".join(parts[:i]) in excluded for i in range(1, len(parts)))
        if owner is None and modules is None and not inside_excluded:
            owner = name
        if owner is not None:
            out[name] = owner
    return out


def unheld_parameters(model: nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> list[str]:
    """Qualified names of trainable parameters that no optimizer holds (they never learn).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> unheld_parameters(model, [torch.optim.SGD(model[0].parameters(), lr=0.1)])
        ['1.weight', '1.bias']
    """
    held = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    return [user_name(n) for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]


_HALF = (torch.float16, torch.bfloat16)


def _uniform(tensors: list[Tensor]) -> bool:
    """All on one device with one dtype (after half precision is widened): one ``_foreach_norm`` call."""
    return len({(t.device, torch.float32 if t.dtype in _HALF else t.dtype) for t in tensors}) == 1


def _norms(tensors: list[Tensor]) -> Tensor:
    """L2 norms as a float64 vector on the first tensor's device (half precision measured in float32).

    Example:
        >>> _norms([torch.tensor([3.0, 4.0]), torch.ones(4, dtype=torch.float16)]).tolist()
        [5.0, 2.0]
    """
    wide = [t.float() if t.dtype in _HALF else t for t in tensors]
    if _uniform(wide):
        return torch.stack(torch._foreach_norm(wide)).double()
    device = wide[0].device
    return torch.stack([torch.linalg.vector_norm(t).double().to(device) for t in wide])


def _binned(weight: Tensor, grad: Tensor | None) -> Tensor:
    """``[2, bins + 4]`` float64 on the device: shared-bin counts, min, max, sum, sum of squares of the weight
    and of its gradient (zeros without one); no host sync."""
    out = []
    for t in (weight, grad if grad is not None and not grad.is_sparse else None):
        if t is None:
            out.append(torch.zeros(len(bin_edges()) + 5, dtype=torch.float64, device=weight.device))
            continue
        flat = t.detach().reshape(-1).float()
        counts = bin_counts(flat, bin_edges(flat.device, flat.dtype)).double()
        lo, hi = torch.aminmax(flat)
        out.append(torch.cat([counts, torch.stack([lo, hi, flat.sum(), flat.pow(2).sum()]).double()]))
    return torch.stack(out)


def histograms_by_owner(
    entries: Sequence[ParamEntry], parts: Iterable[tuple[list[int], Tensor]]
) -> dict[str, dict[str, tuple[Any, float, float, float, float, float]]]:
    """Host: per owner, ``{"weight" | "grad": (counts, min, max, n, sum, sum of squares)}`` summed over its tensors."""
    out: dict[str, dict[str, list[Any]]] = {}
    for rows, block in parts:
        host = block.cpu().numpy()
        for i, row in enumerate(rows):
            entry = entries[row]
            for j, which in enumerate(("weight", "grad")):
                v = host[i, j]
                counts, (lo, hi, total, squares) = v[:-4], v[-4:]
                if counts.sum() == 0:
                    continue
                acc = out.setdefault(entry.owner, {}).get(which)
                if acc is None:
                    out[entry.owner][which] = [counts.copy(), lo, hi, counts.sum(), total, squares]
                else:
                    acc[0] += counts
                    acc[1], acc[2] = min(acc[1], lo), max(acc[2], hi)
                    acc[3] += counts.sum()
                    acc[4] += total
                    acc[5] += squares
    return {o: {w: tuple(v) for w, v in d.items()} for o, d in out.items()}  # type: ignore[misc]


class UpdateProbe:
    """Per-parameter update, gradient and weight norms of the optimizer steps of a logging step.

    Use: ``attach(model, optimizers)`` once; per logging step ``arm()``, then ``before_step(opt)`` /
    ``after_step(opt)`` around each optimizer step, then ``collect()`` (host figures per owner).
    """

    def __init__(self, histograms: bool = False) -> None:
        self.histograms = histograms  # also bin weights and gradients on the shared edges (opt-in)
        self.hist_parts: dict[int, tuple[list[int], Tensor]] = {}  # id(opt) -> rows, [n, 2, bins + 4]
        self.entries: list[ParamEntry] = []
        self._params: list[nn.Parameter] = []
        self._index: dict[int, int] = {}  # id(param) -> row
        self._rows: dict[int, list[int]] = {}  # id(optimizer) -> rows of the watched params it holds
        self._lr: dict[int, float] = {}  # row -> learning rate of its param group at the step
        self._pending: dict[int, tuple[list[int], list[Tensor], Tensor]] = {}  # id(opt) -> rows, copies, [w, g]
        self._blocks: list[tuple[list[int], Tensor]] = []  # rows, [n, 3] norms of one optimizer step
        self._armed = False
        self._stepped: set[int] = set()  # optimizers whose step of this logging step was measured
        self.skipped = 0  # optimizer steps of this logging step that were skipped (AMP found inf/NaN)
        self.unheld: list[str] = []
        self.time = TimeProbe()  # gradient through time at the input of recurrent layers
        #: recurrent owner -> per-time-step gradient RMS at its input, of the last logging step (host)
        self.time_profiles: dict[str, list[float]] = {}

    def attach(
        self,
        model: nn.Module,
        optimizers: Iterable[torch.optim.Optimizer] = (),
        modules: Sequence[Pattern] | None = None,
        exclude: Sequence[Pattern] = (),
    ) -> list[str]:
        """Choose the parameters to watch; return the owners in parameter order."""
        by_name = dict(owners(model, modules, exclude))
        self.entries, self._params, self._index = [], [], {}
        modules_by_name = dict(model.named_modules())
        for qualified, param in model.named_parameters():
            owner = by_name.get(user_name(qualified))
            if owner is None or id(param) in self._index:
                continue
            self._index[id(param)] = len(self._params)
            self._params.append(param)
            module = modules_by_name.get(qualified.rpartition(".")[0])
            matrix = param.ndim >= 2 and not isinstance(module, (nn.Embedding, nn.EmbeddingBag))
            self.entries.append(ParamEntry(user_name(qualified), owner, param.numel(), matrix))
        self.set_optimizers(model, optimizers)
        self.time.attach(model, {e.owner for e in self.entries})
        return list(dict.fromkeys(e.owner for e in self.entries))

    def set_optimizers(self, model: nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Which watched parameters each optimizer holds; ``unheld`` lists the trainable ones none holds."""
        optimizers = list(optimizers)
        self._rows = {
            id(opt): [self._index[id(p)] for g in opt.param_groups for p in g["params"] if id(p) in self._index]
            for opt in optimizers
        }
        self.unheld = unheld_parameters(model, optimizers) if optimizers else []

    @property
    def matrix_owners(self) -> list[str]:
        """Owners holding a weight matrix, in parameter (usually forward) order: what the gradient-flow rules read."""
        return list(dict.fromkeys(e.owner for e in self.entries if e.matrix))

    def owner_of(self, names: Iterable[str]) -> dict[str, list[str]]:
        """Parameter names grouped by owner (names of unwatched parameters are their own owner)."""
        by_name = {e.name: e.owner for e in self.entries}
        out: dict[str, list[str]] = {}
        for name in names:
            out.setdefault(by_name.get(name, name), []).append(name)
        return out

    @property
    def armed(self) -> bool:
        return self._armed

    def arm(self) -> None:
        """Start a logging step: the next step of each optimizer is measured."""
        self._armed = True
        self._pending, self._blocks, self._lr, self.skipped = {}, [], {}, 0
        self._stepped = set()
        self.hist_parts = {}
        self.time.arm()

    def disarm(self) -> None:
        self._armed = False
        self._pending = {}

    def close(self) -> None:
        """Remove the recurrent layers' forward hooks and end any logging step (idempotent)."""
        self.disarm()
        self.time.close()

    @torch.no_grad()
    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Copy the parameters ``optimizer`` is about to update; measure their weights and gradients."""
        key = id(optimizer)
        if not self._armed or key in self._pending or key in self._stepped:
            return  # one measured step per optimizer and logging step
        if key not in self._rows:  # an optimizer made after attach: learn which watched params it holds
            self._rows[key] = [
                self._index[id(p)] for g in optimizer.param_groups for p in g["params"] if id(p) in self._index
            ]
        rows = self._rows[key]
        if not rows:
            return
        for group in optimizer.param_groups:
            lr = float(group.get("lr", math.nan))
            for p in group["params"]:
                row = self._index.get(id(p))
                if row is not None:
                    self._lr[row] = lr
        params = [self._params[r] for r in rows]  # no_grad: no graph, no detach needed
        if all(p.device.type == "cpu" for p in params):  # clone: a copy, twice as fast as a multiplication on CPU
            copies = [p.clone() for p in params]
        else:
            copies = torch._foreach_mul(params, 1.0)  # one copy of each, in one call (one launch per chunk)
        grads = [p.grad for p in params]
        present = [i for i, g in enumerate(grads) if g is not None]
        dense = [grads[i].coalesce().values() if grads[i].is_sparse else grads[i] for i in present]
        if _uniform(params + dense):  # weights and gradients in one foreach_norm (the same per-tensor norms)
            norms = _norms(params + dense)
            w, found = norms[: len(params)], norms[len(params) :]
        else:
            w, found = _norms(params), _norms(dense) if dense else None
        if len(present) == len(params):
            g = found.to(w.device)
        else:
            g = torch.full_like(w, math.nan)
            if present:
                g[present] = found.to(g.device)
        self._pending[key] = (rows, copies, torch.stack([w, g], 1))
        if self.histograms:
            self.hist_parts[key] = (
                rows,
                torch.stack([_binned(p, self._params[r].grad) for p, r in zip(params, rows, strict=True)]),
            )

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The step ran: measure ``||W_new - W_old||`` against the copies (a no-op unless ``before_step`` ran)."""
        pending = self._pending.pop(id(optimizer), None)
        if pending is None:
            return
        rows, copies, wg = pending
        torch._foreach_sub_(copies, [self._params[r] for r in rows])  # W_old - W_new in place: the norm of -dW
        d = _norms(copies).to(wg.device)
        self._blocks.append((rows, torch.cat([wg, d[:, None]], 1)))
        self._stepped.add(id(optimizer))

    def collect(self) -> dict[str, dict[str, float]]:
        """Host figures per owner for the logging step; ends it (one device-to-host transfer).

        Steps that were prepared but never ran (``GradScaler`` skipped them) count in ``skipped``; their
        parameters have weight and gradient figures but no ``update_ratio``.
        """
        n = len(self._params)
        table = torch.full((n, 3), math.nan, dtype=torch.float64)
        seen = torch.zeros(n, dtype=torch.bool)
        pending = [(rows, wg) for rows, _, wg in self._pending.values()]
        self.skipped = len(pending)
        parts = [(rows, block) for rows, block in self._blocks] + [(rows, wg) for rows, wg in pending]
        profiles = self.time.profiles()
        padded = [b if b.shape[1] == 3 else torch.cat([b, torch.full_like(b[:, :1], math.nan)], 1) for _, b in parts]
        flat = [b.reshape(-1) for b in padded] + list(profiles.values())
        host = torch.cat([t.to(flat[0].device) for t in flat]).cpu() if flat else torch.zeros(0)  # one transfer
        at = 0
        for rows, _ in parts:
            idx = torch.tensor(rows, dtype=torch.long)
            table[idx] = host[at : at + 3 * len(rows)].view(-1, 3)
            seen[idx] = True
            at += 3 * len(rows)
        self.time_profiles = {}
        for owner, profile in profiles.items():
            self.time_profiles[owner] = host[at : at + len(profile)].tolist()
            at += len(profile)
        self.disarm()
        return self._figures(table.numpy(), seen.numpy())

    def _figures(self, table, seen) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
        acc: dict[str, list[float]] = {}
        for row, entry in enumerate(self.entries):
            if not seen[row]:
                continue
            w, g, d = (float(x) for x in table[row])
            a = acc.setdefault(entry.owner, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -math.inf])
            a[0] += w * w
            a[1] += g * g if g == g else 0.0
            a[2] += d * d
            a[3] += entry.numel
            a[4] += 1.0 if g == g else 0.0
            a[5] += 1.0
            a[6] = max(a[6], self._lr.get(row, math.nan))
        out = {}
        for owner, (w2, g2, d2, numel, with_grad, count, lr) in acc.items():
            out[owner] = {
                "update_ratio": math.sqrt(d2) / math.sqrt(w2) if w2 > 0 else (math.inf if d2 > 0 else 0.0),
                "grad_rms": math.sqrt(g2 / numel) if with_grad else math.nan,
                "weight_rms": math.sqrt(w2 / numel),
                "param_numel": float(numel),
                "lr": lr,
                "has_grad": with_grad / count,
            }
        return out
