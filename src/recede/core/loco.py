"""LoCo's double gradient as Paper A App. B eq. 21 writes it (``loco-eq21:N``).

Paper A realises LoCo's double gradient (eq. 20, ``∇L(x_{t+1}) + ∇L(x_{t+2})`` for the middle
groups t = 1 … T−2) inside the MPC framework by the trajectory loss of eq. 21,

    l(t, x_t, u_t) = 0 for t = 0,        l(t, x_t, u_t) = L(x_{t+1}) for t > 0,

with horizon 2, so that J²(t) = l(t) + l(t+1) (the sum capped at the last block):

    g(u_0)     = ∇_{u_0} L(x_2)                              block 0 learns from L(x_2) only
    g(u_t)     = ∇_{u_t} [L(x_{t+1}) + L(x_{t+2})]          0 < t < T−1
    g(u_{T−1}) = ∇_{u_{T−1}} L(x_T).

:class:`recede.MPC` with ``double=True`` (``loco-double:N``) also gives block 0
``∇L(x_1) + ∇L(x_2)``: it extends eq. 20 to t = 0.  The two differ in block 0's gradient and in
the head at depth 1, which eq. 21 never evaluates (L(x_1) is in no block's loss) and
``double=True`` trains.  Every other block and head gets the same gradient from both.
"""

from __future__ import annotations

from recede.core.blocks import BlockNet
from recede.core.chains import Chain
from recede.core.engine import MPC


class LoCoEq21(MPC):
    """Horizon 2 with LoCo's double gradient, block 0 learning from L(x_2) only (Paper A eq. 21).

    ``net``'s blocks are LoCo's groups (``net.regroup(N)`` for ``loco-eq21:N``); T ≥ 2.
    """

    def __init__(self, net: BlockNet) -> None:
        if net.T < 2:
            raise ValueError(f"LoCo (eq. 21) needs at least 2 groups, got T = {net.T}")
        super().__init__(net, 2, double=True)

    def chains(self) -> list[Chain]:
        """The double rule's chains of depths 2 … T: L(x_1) is no block's target under eq. 21
        (dropping its chain leaves block 0 learning from L(x_2) alone; no block's graph was
        last used by it, since block 0's is used by depth 2's too)."""
        return [c for c in super().chains() if c.depth != 1]
