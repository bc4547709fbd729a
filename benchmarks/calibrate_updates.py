"""Calibrate the parameter-side thresholds (``update_size``, ``vanishing_gradient``, ``exploding_gradient``).

Trains small healthy and broken models in plain loops (the figures do not depend on the loop), measures
every ``every`` steps with ``UpdateProbe`` exactly as NormWatch does, and prints per case the figures the
rules compare: the largest update ratio of any layer (``update_large``), the largest "too small" factor of
a layer whose gradient is not small (``update_small``), and the largest vanishing / exploding gradient
factors across depth. Healthy runs must stay below the thresholds, broken runs above.

Run: ``.venv/bin/python benchmarks/calibrate_updates.py`` (about 2 minutes on 2 cores; ``--quick``: fewer steps).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from calibrate import cnn as cnn_bn  # the activation calibration's CNN with BatchNorm
from sklearn.datasets import load_digits
from torch import nn

from lightning_normwatch.collect.updates import UpdateProbe
from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.alerts import AlertTracker
from lightning_normwatch.judge.updates import UpdateHistory, gradient_factors, time_factors, update_alerts

Batches = Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class Case:
    name: str
    healthy: bool
    model: Callable[[], nn.Module]
    data: Batches
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    loss: str = "ce"  # "ce" on [B, C] logits, "lm" next-token CE on [B, T, V]
    warmup: int = 0  # linear warm-up steps, then cosine decay to 0 at the end (0: constant)
    steps: int = 300
    expect: str = ""  # the alert a broken case must raise
    known_miss: bool = False  # a broken case the rules do not catch yet (documented in docs/updates.md)


# ------------------------------------------------------------------ data
def digits(batch: int = 64, image: bool = False) -> Batches:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if image:
        x = x.view(-1, 1, 8, 8)
    y = torch.tensor(data.target)

    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        while True:
            idx = torch.randint(0, len(x), (batch,), generator=g)
            yield x[idx], y[idx]

    return batches


def markov_tokens(vocab: int = 64, length: int = 32, batch: int = 32) -> Batches:
    """Token sequences of a sparse random Markov chain (next-token prediction has much to learn)."""
    g0 = torch.Generator().manual_seed(123)
    logits = torch.randn(vocab, vocab, generator=g0) * 3.0
    probs = torch.softmax(logits, -1)

    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        while True:
            tok = torch.randint(0, vocab, (batch,), generator=g)
            seq = [tok]
            for _ in range(length):
                tok = torch.multinomial(probs[tok], 1, generator=g).squeeze(1)
                seq.append(tok)
            s = torch.stack(seq, 1)
            yield s[:, :-1], s[:, 1:]

    return batches


def first_token_class(length: int = 200, d: int = 8, batch: int = 32) -> Batches:
    """Noise sequences whose class is the sign pattern of the first step (an RNN must remember ``length`` steps)."""

    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        while True:
            x = torch.randn(batch, length, d, generator=g)
            y = (x[:, 0, 0] > 0).long() + 2 * (x[:, 0, 1] > 0).long()
            yield x, y

    return batches


# ------------------------------------------------------------------ models
def mlp(depth: int = 3, width: int = 128, act: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = 64
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


class TinyLM(nn.Module):
    """Token + position embedding, ``nn.TransformerEncoder`` (pre-norm, causal), LayerNorm, head."""

    def __init__(self, vocab: int = 64, d: int = 64, layers: int = 2, length: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(length, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.tok(x) + self.pos(torch.arange(t))
        return self.head(self.norm(self.encoder(h, mask=mask, is_causal=True)))


def gpt2(vocab: int = 64, length: int = 32) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=length, n_embd=64, n_layer=2, n_head=4)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    model = GPT2LMHeadModel(config)

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gpt(input_ids=x).logits

    return Logits()


class PostNormLM(TinyLM):
    """``TinyLM`` with 4 post-norm blocks (``norm_first=False``, the original transformer): fragile at high lr."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)


class LSTMClassifier(nn.Module):
    """Two layers before a recurrent one (``nn.LSTM``, or ``nn.GRU`` with ``gru``), a head on its last output.

    ``forget``: the LSTM's forget-gate bias (``b_if + b_hf``; PyTorch's default init leaves it near 0, a
    gate near 0.5 that halves the cell's memory every step; 1 is the usual good init).
    """

    def __init__(self, d: int = 8, hidden: int = 32, gru: bool = False, forget: float | None = None) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.lstm = (nn.GRU if gru else nn.LSTM)(hidden, hidden, batch_first=True)
        if forget is not None:
            with torch.no_grad():
                self.lstm.bias_ih_l0[hidden : 2 * hidden].fill_(forget / 2)
                self.lstm.bias_hh_l0[hidden : 2 * hidden].fill_(forget / 2)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


class LSTMLM(nn.Module):
    """Token embedding, a Linear, an LSTM (or GRU), a head at every step: a loss at every time step."""

    def __init__(self, vocab: int = 64, hidden: int = 64, gru: bool = False) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pre = nn.Linear(hidden, hidden)
        self.lstm = (nn.GRU if gru else nn.LSTM)(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.pre(self.tok(x)))
        return self.head(out)


def chaotic_tanh(depth: int = 20, width: int = 64, gain: float = 4.0) -> nn.Sequential:
    """A deep tanh MLP initialised with weights ``gain / sqrt(fan_in)`` (biases 0): for gains above ~1 it is in
    the chaotic phase (Schoenholz et al. 2017) where the activations stay bounded but the backward gain per layer
    is above 1, so the weight gradients grow toward the input (x4200 over 20 layers at gain 4)."""
    model = mlp(depth, width, nn.Tanh)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(layer.in_features))
                nn.init.zeros_(layer.bias)
    return model


def frozen_group(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """AdamW with the second Linear in a param group of learning rate 0 (frozen by accident)."""
    frozen = list(model[2].parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in frozen)]
    return torch.optim.AdamW([{"params": rest}, {"params": frozen, "lr": 0.0}], lr=lr)


def sgd(lr: float, momentum: float = 0.9) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)


def adam(lr: float, cls: type = torch.optim.Adam, **kw: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: cls(m.parameters(), lr=lr, **kw)


X30_POST, X30_PRE = adam(9e-2, torch.optim.AdamW), adam(3e-2, torch.optim.AdamW)  # x30 of 3e-3 and 1e-3
VANISHING, EXPLODING = "vanishing_gradient", "exploding_gradient"
CASES = [
    Case("mlp_sgd", True, mlp, digits(), sgd(0.05)),
    Case("mlp_adam", True, mlp, digits(), adam(1e-3)),
    Case("mlp_adamw", True, mlp, digits(), adam(1e-3, torch.optim.AdamW, weight_decay=0.01)),
    Case("mlp_adam_batch8", True, mlp, digits(batch=8), adam(1e-3)),
    Case("cnn_bn_sgd", True, cnn_bn, digits(image=True), sgd(0.05)),
    Case("cnn_bn_adam", True, cnn_bn, digits(image=True), adam(1e-3)),
    Case("transformer_adamw_cosine", True, TinyLM, markov_tokens(), adam(1e-3, torch.optim.AdamW), "lm", warmup=50),
    Case("transformer_sgd_cosine", True, TinyLM, markov_tokens(), sgd(0.1), "lm", warmup=50),
    Case("postnorm_adamw_warmup", True, PostNormLM, markov_tokens(), adam(3e-3, torch.optim.AdamW), "lm", warmup=20),
    Case("postnorm_adamw_nowarmup", True, PostNormLM, markov_tokens(), adam(3e-3, torch.optim.AdamW), "lm"),
    Case("lstm_short_adam", True, LSTMClassifier, first_token_class(length=10), adam(1e-3)),
    Case("lstm_short_sgd", True, LSTMClassifier, first_token_class(length=10), sgd(0.1)),
    Case("gru_short_adam", True, lambda: LSTMClassifier(gru=True), first_token_class(length=10), adam(1e-3)),
    Case("lstm_20_forget1_adam", True, lambda: LSTMClassifier(forget=1.0), first_token_class(20), adam(3e-3)),
    Case("lstm_lm_100_adam", True, LSTMLM, markov_tokens(length=100), adam(3e-3), "lm"),
    Case("gru_lm_100_adam", True, lambda: LSTMLM(gru=True), markov_tokens(length=100), adam(3e-3), "lm"),
    # learning rate x30: the post-norm stack breaks (loss stuck near 3.9 against 1.9); the tiny pre-norm
    # transformer and GPT-2 still train (their updates are x30 all the same, and the rule says so)
    Case("postnorm_lr_x30_warmup", False, PostNormLM, markov_tokens(), X30_POST, "lm", 20, 150, "update_size"),
    Case("transformer_lr_x30", False, TinyLM, markov_tokens(), X30_PRE, "lm", expect="update_size"),
    Case("mlp_lr0_group", False, mlp, digits(), frozen_group, expect="update_size"),
    Case("sigmoid_mlp_sgd", False, lambda: mlp(10, 64, nn.Sigmoid), digits(), sgd(0.1), expect="vanishing_gradient"),
    Case("lstm_long_sgd", False, LSTMClassifier, first_token_class(), sgd(0.1), expect=VANISHING),
    Case("lstm_100_adam", False, LSTMClassifier, first_token_class(100), adam(1e-3), expect=VANISHING),
    # default init (forget gate ~0.5) over 20 steps: loss at chance after 600 Adam steps; with forget bias 1 it learns
    Case("lstm_20_default_adam", False, LSTMClassifier, first_token_class(20), adam(3e-3), expect=VANISHING),
    Case("tanh_chaotic_sgd", False, chaotic_tanh, digits(), sgd(1e-4), expect=EXPLODING),
]  # fmt: skip


#: GPT-2 from a config (``transformers``, random init): slow on CPU, run with ``--gpt2``
GPT2_CASES = [
    Case("gpt2_adamw_cosine", True, gpt2, markov_tokens(), adam(6e-4, torch.optim.AdamW), "lm", warmup=30),
    Case("gpt2_adam_nowarmup", True, gpt2, markov_tokens(), adam(6e-4), "lm"),
    Case("gpt2_lr_x30", False, gpt2, markov_tokens(), adam(1.8e-2, torch.optim.AdamW), "lm", expect="update_size"),
]


def scheduler(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    def factor(step: int) -> float:
        if not warmup:
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def run(case: Case, steps: int, every: int, seed: int = 0) -> dict[str, object]:
    """Train one case; return its losses and, per logging step, the figures the rules compare."""
    torch.manual_seed(seed)
    model = case.model()
    opt = case.optimizer(model)
    sched = scheduler(opt, case.warmup, steps)
    probe = UpdateProbe()
    probe.attach(model, [opt])
    history, th, tracker = UpdateHistory(), Thresholds(), AlertTracker()
    rows, losses, alerts = [], [], []
    batches = case.data(seed)
    for step in range(steps):
        x, y = next(batches)
        if step % every == 0:
            probe.arm()  # before the forward: the recurrent layers' input hooks are set during it
        out = model(x)
        loss = nn.functional.cross_entropy(out.flatten(0, -2) if case.loss == "lm" else out, y.flatten())
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        if step % every == 0:
            probe.before_step(opt)
        opt.step()
        sched.step()
        if step % every == 0:
            probe.after_step(opt)
            figs = probe.collect()
            profiles = probe.time_profiles
            order = probe.matrix_owners
            firing, evaluated = update_alerts(step, figs, order, th, history, active=tracker.active, profiles=profiles)
            alerts += [(a.step, a.module, a.kind) for a in tracker.update(firing, evaluated, step)]
            rows.append((step, figs, figure_summary(figs, order, th) | through_time(profiles)))
    return {"losses": losses, "rows": rows, "alerts": alerts}


def through_time(profiles: dict[str, list[float]]) -> dict[str, float]:
    """The largest vanishing / exploding factors through time of the recurrent layers (1 without any)."""
    factors = [time_factors(p) for p in profiles.values()]
    return {
        "time_vanishing": max((v for v, _ in factors), default=1.0),
        "time_exploding": max((e for _, e in factors), default=1.0),
    }


def figure_summary(figs: dict[str, dict[str, float]], order: list[str], th: Thresholds) -> dict[str, float]:
    """The largest figure each rule compares at one logging step."""
    ratios = {k: f["update_ratio"] for k, f in figs.items() if math.isfinite(f["update_ratio"])}
    learning = sorted(r for r in ratios.values() if r > 0)
    median = learning[len(learning) // 2] if learning else math.nan
    grads = sorted(f["grad_rms"] for f in figs.values() if f["grad_rms"] > 0)
    median_grad = grads[len(grads) // 2] if grads else math.nan
    small = [
        median / r if r > 0 else math.inf
        for k, r in ratios.items()
        if figs[k]["grad_rms"] * th.update_small >= median_grad
    ]
    seq = [figs[k]["grad_rms"] for k in order if k in figs and figs[k]["grad_rms"] > 0]
    vanish, explode = gradient_factors(seq) if len(seq) >= 3 else (1.0, 1.0)
    return {
        "update_large": max(ratios.values(), default=math.nan),
        "update_small": max(small, default=1.0),
        "vanishing_gradient": vanish,
        "exploding_gradient": explode,
    }


#: figure -> the threshold it is compared with (through time: the same factors as across depth)
THRESHOLD_OF = {
    "update_large": "update_large",
    "update_small": "update_small",
    "vanishing_gradient": "vanishing_gradient",
    "exploding_gradient": "exploding_gradient",
}
THRESHOLD_OF |= {"time_vanishing": "vanishing_gradient", "time_exploding": "exploding_gradient"}


def calibrate(steps: int, every: int = 10, only: str = "", gpt2_too: bool = False) -> list[str]:
    """Run the cases, print the table; return the names of the cases that failed (healthy warned, broken missed)."""
    figures = tuple(THRESHOLD_OF)
    print(f"{'case':28s} " + " ".join(f"{f[:15]:>15s}" for f in figures) + "  alerts (first step, module, kind)")
    healthy_max = dict.fromkeys(figures, 0.0)
    failures = []
    for case in CASES + (GPT2_CASES if gpt2_too else []):
        if only and not any(part in case.name for part in only.split(",")):
            continue
        start = time.perf_counter()
        result = run(case, steps, every)
        worst = {f: max(s[f] for _, _, s in result["rows"]) for f in figures}  # type: ignore[union-attr]
        if case.healthy:
            for f in figures:
                healthy_max[f] = max(healthy_max[f], worst[f])
        losses = result["losses"]
        kinds = {k for _, _, k in result["alerts"]}  # type: ignore[union-attr]
        ok = not kinds if case.healthy else case.expect in kinds
        if not ok and not case.known_miss:
            failures.append(case.name)
        first = sorted({(m, k): s for s, m, k in reversed(result["alerts"])}.items(), key=lambda x: x[1])[:3]  # type: ignore[union-attr]
        verdict = "ok" if ok else ("KNOWN MISS" if case.known_miss else "FAIL")
        print(
            f"{case.name:28s} "
            + " ".join(f"{worst[f]:15.3g}" for f in figures)
            + f"  {verdict}; loss {sum(losses[:10]) / 10:.2f}->{sum(losses[-10:]) / 10:.2f} "  # type: ignore[arg-type]
            + f"{[(s, m, k) for (m, k), s in first]} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    print(f"{'healthy max':28s} " + " ".join(f"{healthy_max[f]:15.3g}" for f in figures))
    th = Thresholds()
    print(f"{'threshold':28s} " + " ".join(f"{getattr(th, THRESHOLD_OF.get(f, f)):15.3g}" for f in figures))
    return failures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10, help="logging interval")
    parser.add_argument("--gpt2", action="store_true", help="also the GPT-2 cases (slow on CPU)")
    args = parser.parse_args()
    failures = calibrate(100 if args.quick else args.steps, args.every, args.only, args.gpt2)
    if failures:
        raise SystemExit(f"calibration of the parameter-side rules FAILED: {failures}")
    print("parameter-side calibration passed")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
