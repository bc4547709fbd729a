"""The training thread's fast paths of a logging step give the same numbers, bit for bit, as the plain definitions.

Table-lookup bins against ``torch.bucketize``, the batched
moments' finite fast path against the masked path, the hooks' row sampling against the general sampler (same
rows, same generator consumption), the collector's one vector against its blocks, and the update probe's
norms against per-tensor ``vector_norm``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_normwatch.collect import batched
from lightning_normwatch.collect.batched import measure_all, measure_flat
from lightning_normwatch.collect.collector import Collector
from lightning_normwatch.collect.sampling import MeasureSpec, _as_channel_rows, take_sample
from lightning_normwatch.collect.updates import UpdateProbe
from lightning_normwatch.config import SessionConfig
from lightning_normwatch.stats.feature_drift import FEATURE_EDGES, Anchor
from lightning_normwatch.stats.histogram import INDEX_DTYPE, bin_edges, bin_index


def awkward(dtype: torch.dtype, edges: torch.Tensor) -> torch.Tensor:
    """Random values over many decades, the edges themselves and their neighbours, zeros of both signs."""
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(20000, generator=g, dtype=dtype) * 10.0 ** torch.randint(-9, 9, (20000,), generator=g)
    e = edges.to(dtype)
    inf = torch.tensor(math.inf, dtype=dtype)
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e38, -1e38], dtype=dtype)
    return torch.cat([spread, e, e.nextafter(inf), e.nextafter(-inf), special])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which", ["shared", "feature"])
def test_table_bins_equal_bucketize(dtype: torch.dtype, which: str) -> None:
    edges = bin_edges("cpu", dtype) if which == "shared" else torch.tensor(FEATURE_EDGES, dtype=dtype)
    x = awkward(dtype, edges)
    got = bin_index(x, edges, torch.empty(len(x), dtype=INDEX_DTYPE[dtype]))
    assert torch.equal(got.long(), torch.bucketize(x, edges))
    assert torch.equal(bin_index(x, edges).long(), torch.bucketize(x, edges))  # without ``out``


def finite_items(seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    tensors = [
        (torch.randn(256, 256, generator=g), MeasureSpec()),
        (torch.randn(16, 32, 128, generator=g).clamp_min(0), MeasureSpec()),
        (torch.randn(32, 16, 128, generator=g).transpose(0, 1), MeasureSpec()),  # a batch_first attention output
        (torch.randn(256, 10, generator=g) * 1e12, MeasureSpec()),
        (torch.randn(4, 3, 8, 8, generator=g), MeasureSpec(channel_first=True)),
        (torch.sigmoid(torch.randn(32, 64, generator=g) * 4), MeasureSpec(bounds=(0.0, 1.0))),
        (torch.zeros(8, 6), MeasureSpec()),
    ]
    items = [take_sample(x, spec, gen) for x, spec in tensors]
    items.append(take_sample(torch.randn(64, 40, generator=g), MeasureSpec(), gen))
    items[-1] = type(items[-1])(**{**items[-1].__dict__, "pvalues": items[-1].pvalues[:0]})  # a further call
    return items


@pytest.mark.parametrize("seed", [0, 3])
def test_finite_fast_path_equals_masked_path(seed: int) -> None:
    """One scale and one rescale for all groups gives the numbers of ``channel_moments`` group by group."""
    items = finite_items(seed)
    plan = batched._plan(items)
    matrices, bounds = [], []
    for _, positions in plan.row_groups:
        m = torch.cat([items[i].sample for i in positions], dim=1)
        matrices.append(m)
        bounds.append(torch.stack([m.amin(0), m.amax(0), torch.zeros(m.shape[1])]))
    fast = batched._finite_fields(items, plan, matrices, bounds)
    masked = batched._masked_fields(items, plan, matrices, bounds)
    for a, b in zip(fast, masked, strict=True):
        assert torch.equal(a, b)
    # and the flat vector is the blocks, concatenated
    flat, sizes = measure_flat(items)
    assert torch.equal(flat, torch.cat(measure_all(items))) and sizes == [len(b) for b in measure_all(items)]


def plain_rows(x: torch.Tensor, spec: MeasureSpec, generator: torch.Generator) -> torch.Tensor:
    """The general sampler: ``[rows, channels, positions]`` view, rows drawn from it."""
    x = x.reshape(1, 1) if x.ndim == 0 else (x.reshape(-1, 1) if x.ndim == 1 else x)
    if spec.channel_first and x.ndim >= 3:
        view = x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))
    else:
        view = x.reshape(math.prod(x.shape[:-1]), x.shape[-1], 1)
    if view.shape[1] > spec.max_channels:
        view = view[:, :: math.ceil(view.shape[1] / spec.max_channels)]
    batch, channels, positions = view.shape
    rows = batch * positions
    if rows * channels <= spec.sample_size:
        return view.permute(0, 2, 1).reshape(rows, channels)
    want = min(rows, max(spec.min_rows, spec.sample_size // channels))
    if rows <= 32 * want:
        r = torch.randperm(rows, generator=generator)[:want]
        return view[r // positions, :, r % positions]
    b = torch.randint(batch, (want,), generator=generator)
    if positions == 1:
        return view[b, :, 0]
    return view[b, :, torch.randint(positions, (want,), generator=generator)]


@pytest.mark.parametrize(
    ("make", "spec"),
    [
        (lambda: torch.randn(256, 512), MeasureSpec()),
        (lambda: torch.randn(32, 16, 128).transpose(0, 1), MeasureSpec()),  # transposed: rows in memory order
        (lambda: torch.randn(5, 6, 7, 40).permute(2, 0, 1, 3), MeasureSpec(sample_size=64)),
        (lambda: torch.randn(64, 300)[::2, :200], MeasureSpec(sample_size=256)),  # strided rows: copied
        (lambda: torch.randn(4000, 8), MeasureSpec(sample_size=64)),  # rows > 32 * wanted: with replacement
        (lambda: torch.randn(64, 8, 3).transpose(1, 2), MeasureSpec(sample_size=64)),  # channels not last in memory
        (lambda: torch.randn(8, 16, 6, 6), MeasureSpec(channel_first=True)),
        (lambda: torch.randn(16, 3000), MeasureSpec(max_channels=2048)),
        (lambda: torch.randn(10, 5), MeasureSpec()),  # taken whole
        (lambda: torch.randn(50), MeasureSpec(sample_size=16)),
        (lambda: torch.randn(()), MeasureSpec()),
        (lambda: torch.randn(0, 20), MeasureSpec()),
    ],
)
def test_row_sampling_draws_the_same_rows(make, spec: MeasureSpec) -> None:  # noqa: ANN001
    x = make()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    rows, _ = _as_channel_rows(x, spec, g1)
    assert torch.equal(rows, plain_rows(x, spec, g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    taken = take_sample(x, spec, g1)  # never a view of x
    assert taken.sample.numel() == 0 or taken.sample.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


def test_collector_vector_is_its_blocks_with_input_tails() -> None:
    """``local_blocks``' one vector: every tensor's blocks in order, an input's tail after each of its calls."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 8)
    anchor = Anchor.of(x.mean(0).double().numpy(), x.std(0).double().numpy())
    collector = Collector(SessionConfig(), anchors=lambda key: anchor)
    collector.attach(model)
    collector.expect_inputs((x,))
    collector.arm()
    model(x)
    model(x)  # a second call of every module (accumulated batches)
    collector.disarm()
    taken = {k: list(v) for k, v in collector._blocks.items()}
    tails = {k: list(v) for k, v in collector._tails.items()}
    flat, shapes = collector.local_blocks()
    blocks = iter(measure_all([s for v in taken.values() for s in v]))
    expected = []
    for key, calls in taken.items():
        mine = [next(blocks) for _ in calls]
        if key in tails:
            mine = [torch.cat([b, t.to(b.dtype)]) for b, t in zip(mine, tails[key], strict=True)]
        expected += mine
        assert shapes[key] == (len(mine), len(mine[0]))
    assert "input" in tails and torch.equal(flat, torch.cat(expected))


def test_update_norms_equal_per_tensor_norms() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    model[3].requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = UpdateProbe()
    probe.attach(model, [opt])
    params = list(model.parameters())
    model[:3](torch.randn(32, 6)).pow(2).mean().backward()  # the last layer gets no gradient
    before = [p.detach().clone() for p in params]
    probe.arm()
    probe.before_step(opt)
    opt.step()
    probe.after_step(opt)
    rows, block = probe._blocks[0]
    for row, (w, g, d) in zip(rows, block.tolist(), strict=True):
        p = params[row]
        assert w == torch.linalg.vector_norm(before[row]).double().item()
        if p.grad is None:
            assert math.isnan(g)
        else:
            assert g == torch.linalg.vector_norm(p.grad).double().item()
        assert d == torch.linalg.vector_norm(p.detach() - before[row]).double().item()


def plain_channel_moments(sample: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``channel_moments`` as first written: fresh products, non-zero values counted from a boolean mask."""
    from lightning_normwatch.stats.moments import pow2_scale, rescale

    absmax = sample.abs().nan_to_num_(0.0, 0.0, 0.0).amax(0) if sample.shape[0] else sample.new_zeros(sample.shape[1:])
    scale = pow2_scale(absmax)
    sample = sample / scale
    f = sample.mul(0).add_(1).nan_to_num_(0.0, 0.0, 0.0)
    z = sample.nan_to_num(0.0, 0.0, 0.0)
    n = f.sum(0)
    count = n.clamp_min(1)
    mean = z.sum(0) / count
    mean = mean + torch.addcmul(z, f, mean, value=-1).sum(0) / count
    d = torch.addcmul(z, f, mean, value=-1)
    d2 = d * d
    nonzero = (sample != 0).sum(0, dtype=sample.dtype)
    return rescale(n, mean, d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0), nonzero, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_moments_equal_their_plain_definition(dtype: torch.dtype) -> None:
    from lightning_normwatch.stats.moments import channel_moments

    g = torch.Generator().manual_seed(4)
    x = (torch.randn(200, 9, generator=g) * 1e3).to(dtype)
    x[:, 1] = 0.0
    x[::3, 2] = 0.0
    x[5, 3], x[6, 4], x[7, 4] = math.nan, math.inf, -math.inf
    x[:, 5] = math.nan
    for sample in (x, x[:0], x[:1]):
        for a, b in zip(channel_moments(sample), plain_channel_moments(sample), strict=True):
            assert torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))
