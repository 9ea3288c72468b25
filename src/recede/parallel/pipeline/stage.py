"""One rank's stage of a receding-horizon pipeline: :class:`Pipeline`.

Every rank builds the same :class:`~recede.core.blocks.BlockNet` (same seed) and wraps it; rank r
keeps blocks [a_r, b_r) and the heads of depths (a_r, b_r] on its device and runs the
schedule of :mod:`recede.parallel.pipeline.plan`: a step of M micro-batches streams activations
forward and, where the horizon spans a stage boundary, stacked cotangents back, with
``torch.distributed`` point-to-point operations (gloo on CPUs, NCCL on GPUs).  Each rank
fills ``.grad`` of its own blocks and heads only, so it steps an optimizer over
:meth:`Pipeline.parameters`.

Exactness (SPEC §8): every loss is a batch mean, so the loss of micro-batch m enters with
weight n_m / B and the sum over micro-batches of each chain's gradient is the whole batch's
g_h(u_t) = ∇_{u_t} L(x_{min(t+h, T)}) (Paper A eq. 9).  The gradients are written into
``.grad`` only after an all-reduce of the losses has shown them finite on every rank
(otherwise every rank raises :class:`~recede.core.engine.NonFiniteLossError`, nothing written).
A parameter used on several ranks (a head shared by every depth, an embedding tied to the
final head) gets the sum of its uses' gradients, all-reduced among all ranks, SPEC §1.

A peer that dies or hangs makes a receive, the step's closing all-reduce or a send fail
within the process group's timeout; that is raised as
:class:`~recede.parallel.data_parallel.RankFailure` naming the operation and the peer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from recede.bpm.estimator import BPModified
from recede.core.blocks import BlockNet
from recede.core.engine import Graph, StepGradients, accumulate, check_horizon, sweep, write_grads
from recede.parallel.data_parallel import RankFailure
from recede.parallel.pipeline.plan import Chain, Plan, balanced_sizes, even_sizes
from recede.parallel.state import current

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HEADER = 10  # dtype code, ndim, up to 8 sizes


@dataclass
class StepTiming:
    """Seconds of the last step on this rank: wall time and time spent computing."""

    step_s: float
    busy_s: float

    @property
    def idle_fraction(self) -> float:
        return 1 - self.busy_s / self.step_s if self.step_s > 0 else 0.0


@contextmanager
def _peer(what: str) -> Iterator[None]:
    """Turn a backend error into a :class:`RankFailure` that names the operation."""
    try:
        yield
    except RuntimeError as err:
        if isinstance(err, RankFailure):
            raise
        raise RankFailure(
            f"{current()}: {what} failed: the peer died or hung past the timeout ({str(err).splitlines()[0]})",
            operation=what,
        ) from err


def forward_times(net: BlockNet, x: torch.Tensor, repeats: int = 3) -> list[float]:
    """The median forward time of each block on ``x`` (no gradients), in seconds."""
    times: list[list[float]] = [[] for _ in range(net.T)]
    with torch.no_grad():
        for _ in range(repeats + 1):
            z = x
            for t, block in enumerate(net.blocks):
                start = time.perf_counter()
                z = block(z)
                times[t].append(time.perf_counter() - start)
    return [sorted(ts[1:])[len(ts[1:]) // 2] for ts in times]


def _unique(params: Iterator[nn.Parameter]) -> list[nn.Parameter]:
    """The trainable ones of ``params``, each once, in order."""
    seen, out = set(), []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class Pipeline:
    """Receding-horizon gradients of a :class:`BlockNet` split across the ranks of a group.

    >>> ctx = recede.parallel.data_parallel.init_from_env()                     # under torchrun
    >>> pipe = Pipeline(build_net(seed=0), horizon=1, micro_batches=16, sample=x0)
    >>> opt = torch.optim.SGD(pipe.parameters(), lr=0.1)             # this stage's only
    >>> for x, y in loader:                                           # the same batches on every rank
    ...     opt.zero_grad(); loss = pipe.backward(x, y); opt.step()

    Args:
        net: the whole block network, built identically on every rank; this rank's blocks
            and heads are moved to ``device``, the others are left where they are.
        horizon: h in [1, T] as in :class:`recede.MPC` (T is BP).
        micro_batches: M, the micro-batches a step's batch is cut into (``tensor_split``).
        sizes: the blocks of each stage (one per rank, summing to T); by default the split
            that balances the blocks' forward times measured on ``sample`` by rank 0, or
            equal block counts without a sample.
        sample: an input batch to time the blocks' forward passes on.
        double: LoCo's double rule (Paper A eq. 20), as in :class:`recede.MPC`.
        device: where this rank computes (default: the device of the net's parameters).
        timeout: seconds a rank waits for a peer's message (default: the process group's).

    Without a process group (or with one rank) this is one stage holding every block.
    Activations between blocks must be tensors.
    """

    def __init__(
        self,
        net: BlockNet,
        horizon: int,
        micro_batches: int,
        *,
        sizes: Sequence[int] | None = None,
        sample: torch.Tensor | None = None,
        double: bool = False,
        device: torch.device | str | None = None,
        timeout: float | None = None,
    ) -> None:
        if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 1:
            raise ValueError(f"micro_batches must be a positive integer, got {micro_batches!r}")
        check_horizon(horizon, net.T)
        state = current()
        self.distributed, self.rank, stages = state.distributed, state.rank, state.world_size
        if stages > net.T:
            raise ValueError(f"a pipeline of {stages} ranks needs at least {stages} blocks; the net has T = {net.T}")
        sizes = list(sizes) if sizes is not None else self._default_sizes(net, stages, sample)
        if len(sizes) != stages or sum(sizes) != net.T:
            raise ValueError(f"stage sizes {sizes} must give one stage per rank ({stages}) and sum to T = {net.T}")
        self.net, self.horizon, self.double, self.micro_batches = net, horizon, double, micro_batches
        self.plan = Plan(tuple(sizes), horizon, double)
        self.a, self.b = self.plan.bounds(self.rank)
        first_param = next(net.parameters(), None)
        self.device = (
            torch.device(device)
            if device is not None
            else (first_param.device if first_param is not None else torch.device("cpu"))
        )
        depths = [c.depth for c in self.plan.local(self.rank)]
        heads: list[nn.Module] = []
        for k in depths:
            if all(net.head(k) is not h for h in heads):
                heads.append(net.head(k))
        self.stage = nn.ModuleDict(
            {"blocks": nn.ModuleList(net.blocks[self.a : self.b]), "heads": nn.ModuleList(heads)}
        ).to(self.device)
        self.block_params = {t: net.block_parameters(t) for t in range(self.a, self.b)}
        self.head_params = {k: _unique(net.head(k).parameters()) for k in depths}
        self.shared = self._shared_parameters()
        self._forward_links, self._backward_links = self._links(timeout)
        self._local = {c.depth: c for c in self.plan.local(self.rank)}
        self._up, self._down = self.plan.up(self.rank), self.plan.down(self.rank)
        self._down_in_forward = bool(self._down) and self.plan.sends_in_forward(self.rank)
        self._ops: dict[int, list] = {}  # micro-batch count -> this rank's operations
        self.last_losses: dict[int, float] = {}
        self.last_timing = StepTiming(0.0, 0.0)
        if self.shared:  # every rank starts from rank 0's copy of what the stages share
            with torch.no_grad(), _peer("broadcasting shared parameters"):
                for p in self.shared:
                    buffer = p.detach().to(self.device)
                    dist.broadcast(buffer, src=0)
                    p.copy_(buffer)

    # -- construction ----------------------------------------------------------------------

    def _default_sizes(self, net: BlockNet, stages: int, sample: torch.Tensor | None) -> list[int]:
        if sample is None or stages == 1:
            return even_sizes(net.T, stages)
        sizes: list[list[int] | None] = [balanced_sizes(forward_times(net, sample), stages) if self.rank == 0 else None]
        with _peer("broadcasting the stage split"):
            dist.broadcast_object_list(sizes, src=0)
        split = sizes[0]
        assert split is not None  # rank 0's, received
        return split

    def _shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that the stages of several ranks use, in the same order on every rank."""
        users: dict[int, set[int]] = {}
        for r in range(self.plan.stages):
            a, b = self.plan.bounds(r)
            used = [p for t in range(a, b) for p in self.net.block_parameters(t)]
            used += [p for c in self.plan.local(r) for p in self.net.head(c.depth).parameters()]
            for p in used:
                users.setdefault(id(p), set()).add(r)
        return [p for p in _unique(self.net.parameters()) if len(users.get(id(p), ())) > 1]

    # -- public API ------------------------------------------------------------------------

    @property
    def T(self) -> int:
        return self.net.T

    @property
    def sizes(self) -> list[int]:
        return list(self.plan.sizes)

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters this rank's stage uses (its blocks and evaluated heads)."""
        return _unique(p for ps in [*self.block_params.values(), *self.head_params.values()] for p in ps)

    def bp_modified(self, period: int, offset_samples: int, micro_batch: int, **options) -> BPModified:
        """Paper B's BP-modified method (eq. 5) around this pipeline.

        Its refreshes run each micro-batch of b' samples through this pipeline and through one
        of horizon T on the same split, so every rank gets g̃_h and g̃_T of its own blocks and
        forms their a, λ and Δ (they are per block, SPEC §5).  ``options`` are those of
        :class:`~recede.bpm.estimator.BPModified` (``rule``, ``data``, ``batch_size``, ``seed`` ...).
        Every rank must call ``refresh`` with the same micro-batches (``data=`` draws them alike).
        """
        exact = Pipeline(self.net, self.T, self.micro_batches, sizes=self.sizes, device=self.device)
        return BPModified(
            self.net,
            self.horizon,
            period,
            offset_samples,
            micro_batch,
            double=self.double,
            engines=(self, exact),
            blocks=range(self.a, self.b),
            **options,
        )

    def gather_parameters(self) -> None:
        """Copy every stage's parameters and buffers from the rank that trains them to every
        rank, so that each holds the whole current net (to evaluate or save it whole)."""
        if not self.distributed:
            return
        with torch.no_grad(), _peer("gathering the stages' parameters"):
            for r in range(self.plan.stages):
                a, b = self.plan.bounds(r)
                modules = [*self.net.blocks[a:b], *(self.net.head(c.depth) for c in self.plan.local(r))]
                for tensor in (t for module in modules for t in [*module.parameters(), *module.buffers()]):
                    buffer = tensor.detach().to(self.device)
                    dist.broadcast(buffer, src=r)
                    tensor.copy_(buffer)

    def backward(self, x: torch.Tensor | None, y: torch.Tensor, *, scaler: torch.amp.GradScaler | None = None) -> float:
        """One pipeline step on the batch (x, y): accumulate g_h into this stage's ``.grad``
        and return the batch's final loss L(x_T) on every rank.

        Every rank passes the same targets ``y``; only rank 0 reads ``x``.
        ``self.last_losses`` then maps each evaluated depth k to L(x_k).
        """
        step = self.gradients(x, y, scaler=scaler)
        write_grads(step.total())
        return float(step.losses[self.T])

    def gradients(
        self,
        x: torch.Tensor | None,
        y: torch.Tensor,
        *,
        scaler: torch.amp.GradScaler | None = None,
        per_use: bool = True,
    ) -> StepGradients:
        """One pipeline step without touching ``.grad``, as :meth:`recede.MPC.gradients`: this
        stage's blocks' and heads' gradients per use, and every depth's loss on every rank.

        Uses are always kept apart (``per_use`` is accepted for the engine's signature).  The
        returned object's ``total()`` sums the parameters shared between ranks over the ranks,
        a collective: call it once per step on every rank.  Raises
        :class:`~recede.core.engine.NonFiniteLossError` on every rank when a loss is not finite.
        """
        if scaler is not None and scaler.is_enabled():
            raise ValueError("the pipeline does not support a GradScaler yet; train it in float32 or bfloat16")
        start = time.perf_counter()
        self._busy = 0.0
        n = len(y)
        M = min(self.micro_batches, n)
        self._ys = [part.to(self.device) for part in y.tensor_split(M)]
        if self.rank == 0 and x is None:
            raise ValueError("the pipeline's first rank needs the input batch x, got None")
        self._xs = x.tensor_split(M) if x is not None and self.rank == 0 else None
        self._weights = [len(part) / n for part in self._ys]
        self._windows: dict[int, dict[int, Graph]] = {}
        self._outgoing: dict[int, list[torch.Tensor]] = {}
        self._sent: dict[int, tuple[torch.Size, torch.dtype]] = {}
        self._sends: list = []
        self._losses: dict[int, list[torch.Tensor]] = {}
        step = _StageGradients([{} for _ in range(self.T)], stage=self)
        self._step: _StageGradients | None = step
        try:
            with torch.enable_grad():
                if M not in self._ops:
                    self._ops[M] = self.plan.ops(self.rank, M)
                for op in self._ops[M]:
                    self._forward(op.m) if op.kind == "F" else self._backward(op.m)
            for _, work, _, what in self._sends:
                with _peer(what):
                    work.wait()
            step.losses = self._reduce_losses()
        finally:
            self._windows, self._outgoing, self._sends, self._sent, self._step = {}, {}, [], {}, None
        self.last_timing = StepTiming(time.perf_counter() - start, self._busy)
        return step

    # -- the two operations of plan.py -------------------------------------------------------

    def _forward(self, m: int) -> None:
        """F(m): this stage's blocks on micro-batch m and the chains that start here."""
        if self._xs is not None:  # the first rank
            z = self._xs[m].to(self.device)
        else:
            z = self._recv_activation(m).requires_grad_(bool(self._down))
        tick = time.perf_counter()
        window = self._windows[m] = {}
        outgoing = self._outgoing[m] = []
        for t in range(self.a, self.b):
            out = self.net.run_block(t, z)
            window[t] = Graph([z] if z.requires_grad else [], [out] if out.requires_grad else [])
            z = out.detach().requires_grad_()
            if t == self.b - 1 and self.rank < self.plan.stages - 1:
                self._busy += time.perf_counter() - tick
                self._send_activation(z.detach(), m)
                tick = time.perf_counter()
            chain = self._local.get(t + 1)
            if chain is not None:
                c = self._carry(window, chain, self._depth_gradient(z, m, t + 1), t + 1)
                if chain.lowest < self.a:
                    outgoing.append(c)
        self._busy += time.perf_counter() - tick
        if not window:
            del self._windows[m]
        if self._down_in_forward:
            self._send_cotangents(m)

    def _backward(self, m: int) -> None:
        """B(m): carry the cotangents of the chains that cross b_r through this stage."""
        cotangents = self._recv_cotangents(m, len(self._up))
        tick = time.perf_counter()
        window = self._windows[m]
        for chain, c in zip(self._up, cotangents.unbind(0)):
            c = self._carry(window, chain, c, self.b)
            if chain.lowest < self.a:
                self._outgoing[m].append(c)
        self._busy += time.perf_counter() - tick
        if self._down and not self._down_in_forward:
            self._send_cotangents(m)
        if not window:
            del self._windows[m]

    def _depth_gradient(self, z_k: torch.Tensor, m: int, k: int) -> torch.Tensor:
        """Evaluate L(x_k) on micro-batch m, train head k on it, return n_m/B · ∂L/∂x_k."""
        loss = self.net.depth_loss(z_k, self._ys[m], k)
        weight = self._weights[m]
        self._losses.setdefault(k, []).append(loss.detach() * weight)
        params = self.head_params[k]
        out = torch.autograd.grad(loss * weight, [z_k, *params], allow_unused=True)
        assert self._step is not None  # inside step()
        accumulate(self._step.heads, params, out[1:])
        return out[0] if out[0] is not None else torch.zeros_like(z_k)

    def _carry(self, window: dict[int, Graph], chain: Chain, c: torch.Tensor, top: int) -> torch.Tensor:
        """Carry ``c`` from x_top down this stage's part of ``chain`` with the engine's
        :func:`~recede.core.engine.sweep`: weight gradients where the chain owes them, each
        block graph freed after its last chain.  Returns the cotangent at x_{a_r} (zeros where
        nothing reached it; meaningful when the chain goes on below this stage)."""
        bottom = max(chain.lowest, self.a)
        below = window[bottom].inputs if bottom > chain.lowest else []
        outputs = window[top - 1].outputs
        assert self._step is not None  # inside step()
        grads = sweep(
            window,
            outputs,
            [c] if outputs else None,
            [],
            top,
            bottom,
            chain.lowest,
            chain.weighted,
            chain.released,
            self.block_params,
            self._step,
        )
        for j in chain.released & set(range(bottom, top)):
            del window[j]
        if not below:
            return c
        return grads[0] if grads and grads[0] is not None else torch.zeros_like(below[0])

    # -- messages ----------------------------------------------------------------------------
    #
    # Each link (r, r+1) has one group per direction, so activations (r -> r+1) and cotangents
    # (r+1 -> r) each travel in micro-batch order on a channel of their own; with NCCL the two
    # directions then never queue behind each other on one stream.  Sends are asynchronous.
    # Before sending the activations of micro-batch m a rank waits until those of m-2 were
    # received: a fast rank runs at most two micro-batches ahead, and since their receive comes
    # earlier in the schedule's global order (plan.py) than this wait, nothing can deadlock.

    def _links(self, timeout: float | None) -> tuple[list, list]:
        """Per link, the group of its activations and the group of its cotangents."""
        if not self.distributed:
            return [], []
        if timeout is None:
            world = dist.group.WORLD
            assert world is not None  # self.distributed
            backend = world._get_backend(self.device)
            seconds = backend.options._timeout if hasattr(backend, "options") else None
        else:
            seconds = timedelta(seconds=timeout)
        forward, backward = [], []
        with _peer("creating the pipeline's links"):
            for r in range(self.plan.stages - 1):
                forward.append(dist.new_group([r, r + 1], timeout=seconds))
                backward.append(dist.new_group([r, r + 1], timeout=seconds))
        return forward, backward

    def _send_activation(self, z: torch.Tensor, m: int) -> None:
        """Post micro-batch m's x_{b_r} (after a header with its dtype and shape) to rank r+1."""
        what = f"sending the activations of micro-batch {m} to rank {self.rank + 1}"
        self._wait_sends(lambda sent: sent <= m - 2)
        if z.dtype not in _DTYPES or z.dim() > _HEADER - 2:
            raise ValueError(
                f"the pipeline sends float tensors of at most {_HEADER - 2} "
                f"dimensions between stages; got {z.dtype} of shape {tuple(z.shape)}"
            )
        head = torch.zeros(_HEADER, dtype=torch.int64)
        head[0], head[1] = _DTYPES.index(z.dtype), z.dim()
        head[2 : 2 + z.dim()] = torch.tensor(z.shape, dtype=torch.int64)
        self._sent[m] = (z.shape, z.dtype)
        group = self._forward_links[self.rank]
        for tensor in (head.to(self.device), z.contiguous()):
            with _peer(what):
                self._sends.append((m, dist.isend(tensor, self.rank + 1, group=group), tensor, what))

    def _send_cotangents(self, m: int) -> None:
        """Post micro-batch m's stacked cotangents at x_{a_r} to rank r-1."""
        what = f"sending the cotangents of micro-batch {m} to rank {self.rank - 1}"
        self._wait_sends(lambda sent: False)  # only drops the finished ones
        tensor = torch.stack(self._outgoing.pop(m))
        with _peer(what):
            work = dist.isend(tensor, self.rank - 1, group=self._backward_links[self.rank - 1])
        self._sends.append((None, work, tensor, what))

    def _wait_sends(self, must) -> None:
        """Wait for the sends of activations whose micro-batch satisfies ``must``; forget every
        finished send."""
        kept = []
        for m, work, tensor, what in self._sends:
            if m is not None and must(m):
                with _peer(what):
                    work.wait()
            elif not work.is_completed():
                kept.append((m, work, tensor, what))
        self._sends = kept

    def _recv(self, tensor: torch.Tensor, peer: int, group, what: str) -> torch.Tensor:
        with _peer(f"{what} from rank {peer}"):
            dist.recv(tensor, peer, group=group)
        return tensor

    def _recv_activation(self, m: int) -> torch.Tensor:
        what, group = f"receiving the activations of micro-batch {m}", self._forward_links[self.rank - 1]
        header = self._recv(torch.zeros(_HEADER, dtype=torch.int64, device=self.device), self.rank - 1, group, what)
        head = header.tolist()
        buffer = torch.empty(head[2 : 2 + head[1]], dtype=_DTYPES[head[0]], device=self.device)
        return self._recv(buffer, self.rank - 1, group, what)

    def _recv_cotangents(self, m: int, count: int) -> torch.Tensor:
        shape, dtype = self._sent[m]
        buffer = torch.empty((count, *shape), dtype=dtype, device=self.device)
        return self._recv(
            buffer, self.rank + 1, self._backward_links[self.rank], f"receiving the cotangents of micro-batch {m}"
        )

    # -- end of step -------------------------------------------------------------------------

    def _reduce_losses(self) -> dict[int, torch.Tensor]:
        """Share every depth's loss; raise NonFiniteLossError everywhere if one is not finite."""
        table = torch.zeros(2, self.T, dtype=torch.float64, device=self.device)
        for k, parts in self._losses.items():
            table[0, k - 1], table[1, k - 1] = torch.stack(parts).double().sum(), 1
        if self.distributed:
            with _peer("the all-reduce of the step's losses"):
                dist.all_reduce(table)
        values, evaluated = table.cpu()
        losses = {k + 1: v for k, (v, e) in enumerate(zip(values, evaluated)) if e}
        StepGradients([], losses=losses).check_finite()  # the engine's check, on every rank's losses
        self.last_losses = {k: float(v) for k, v in losses.items()}
        return losses

    def sum_shared(self, grads: dict[nn.Parameter, torch.Tensor]) -> None:
        """Replace the gradient of each parameter shared between ranks by its sum over the
        ranks (SPEC §1), in place; every rank must call it at the same point."""
        if not self.shared:
            return
        flat = torch.cat([grads.get(p, torch.zeros_like(p)).reshape(-1).to(self.device) for p in self.shared])
        with _peer("the all-reduce of shared parameters' gradients"):
            dist.all_reduce(flat)
        own = {id(p) for p in self.parameters()}
        for p, part in zip(self.shared, flat.split([p.numel() for p in self.shared])):
            if id(p) in own:
                grads[p] = part.view_as(p)


@dataclass
class _StageGradients(StepGradients):
    """A stage's :class:`~recede.core.engine.StepGradients`; ``total()`` adds the other ranks' uses
    of shared parameters (a collective)."""

    stage: Pipeline | None = None

    def total(self) -> dict[nn.Parameter, torch.Tensor]:
        grads = super().total()
        assert self.stage is not None  # set by Pipeline.gradients
        self.stage.sum_shared(grads)
        return grads
