"""Policy and value heads on top of a core's features.

Policy heads map features ``h`` [..., H] to the *parameters* of an action
distribution (a tensor, so rollout storage can keep π_old exactly as the actor saw it,
spec §5 "the policy that collected the batch"):

* :class:`CategoricalHead` — logits [..., A] for ``Discrete(A)`` actions.
* :class:`GaussianHead` — ``cat(mean, std)`` [..., 2·D] for ``Box`` actions of size D,
  a diagonal Gaussian; the std is state-dependent (softplus, as in the V-MPO paper)
  or a learned state-independent log-std.

Both expose ``log_prob(params, a)``, ``entropy(params)``, ``sample(params)`` and
``mode(params)``; the KL divergences and losses come from :mod:`emrl.objectives`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emrl.nn.mlp import orthogonal_init

_LOG_2PI = math.log(2.0 * math.pi)


class CategoricalHead(nn.Module):
    """``h`` [..., H] -> logits [..., A]; actions are integer tensors [...]."""

    discrete = True

    def __init__(self, input_size: int, num_actions: int, init_gain: float = 0.01) -> None:
        super().__init__()
        self.num_actions = int(num_actions)
        self.linear = orthogonal_init(nn.Linear(input_size, self.num_actions), init_gain)
        self.param_size = self.num_actions

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear.forward(h)  # direct: skips the hook machinery of a call

    @staticmethod
    def log_prob(logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log π(a) [...] for logits [..., A] and integer actions [...]."""
        logp = F.log_softmax(logits, dim=-1)
        return logp.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def sample(logits: torch.Tensor) -> torch.Tensor:
        """Actions [...] sampled from softmax(logits) (Gumbel-max)."""
        u = torch.rand_like(logits).clamp_(1e-20, 1.0)
        return (logits - torch.log(-torch.log(u))).argmax(-1)

    @staticmethod
    def mode(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def action_shape(self) -> tuple[int, ...]:
        return ()


class GaussianHead(nn.Module):
    """``h`` [..., H] -> ``cat(mean, std)`` [..., 2·D] of a diagonal Gaussian.

    ``state_dependent_std``: std = softplus(linear(h)) + ``min_std`` (V-MPO paper);
    otherwise std = exp(log_std) with a learned vector initialised at ``init_log_std``.
    Actions are float tensors [..., D] in the unsquashed space (environments clip them).
    """

    discrete = False

    def __init__(
        self, input_size: int, action_dim: int, *, state_dependent_std: bool = True,
        init_std: float = 1.0, min_std: float = 1e-3, init_gain: float = 0.01,
    ) -> None:
        super().__init__()
        self.action_dim = int(action_dim)
        self.state_dependent_std = state_dependent_std
        self.min_std = float(min_std)
        self.mean = orthogonal_init(nn.Linear(input_size, self.action_dim), init_gain)
        if state_dependent_std:
            self.std = orthogonal_init(nn.Linear(input_size, self.action_dim), init_gain)
            # softplus(b) + min_std = init_std
            target = max(init_std - self.min_std, 1e-4)
            nn.init.constant_(self.std.bias, math.log(math.expm1(target)))
        else:
            self.log_std = nn.Parameter(torch.full((self.action_dim,), math.log(init_std)))
        self.param_size = 2 * self.action_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mean = self.mean(h)
        if self.state_dependent_std:
            std = F.softplus(self.std(h)) + self.min_std
        else:
            std = self.log_std.exp().expand_as(mean)
        return torch.cat([mean, std], dim=-1)

    @staticmethod
    def split(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cat(mean, std)`` [..., 2·D] -> (mean [..., D], std [..., D])."""
        d = params.shape[-1] // 2
        return params[..., :d], params[..., d:]

    @staticmethod
    def log_prob(params: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Sum over action dimensions of the Gaussian log density: [...]."""
        mean, std = GaussianHead.split(params)
        z = (action - mean) / std
        return (-0.5 * z.pow(2) - std.log() - 0.5 * _LOG_2PI).sum(-1)

    @staticmethod
    def entropy(params: torch.Tensor) -> torch.Tensor:
        """Entropy [...] of the diagonal Gaussian."""
        _, std = GaussianHead.split(params)
        return (std.log() + 0.5 * (1.0 + _LOG_2PI)).sum(-1)

    @staticmethod
    def sample(params: torch.Tensor) -> torch.Tensor:
        mean, std = GaussianHead.split(params)
        return mean + std * torch.randn_like(mean)

    @staticmethod
    def mode(params: torch.Tensor) -> torch.Tensor:
        return GaussianHead.split(params)[0]

    def action_shape(self) -> tuple[int, ...]:
        return (self.action_dim,)


class ValueHead(nn.Module):
    """``h`` [..., H] -> V(s) [...] (a linear layer, orthogonal init with gain 1)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.linear = orthogonal_init(nn.Linear(input_size, 1), 1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear.forward(h).squeeze(-1)  # direct: skips the hook machinery
