"""The actor-critic network: encoder -> core -> policy head and value head.

``Agent.forward(obs[T, B, ...], state, reset[T, B])`` returns the policy parameters
[T, B, P] (logits, or Gaussian ``cat(mean, std)``), the values [T, B] and the core
state after step T-1. With the stateless ``mlp`` core the value function may use its
own MLP (``separate_value=True``, the usual choice for small PPO agents); memory cores
(lstm, trxl, gtrxl) share the core between the heads.

Image observations (uint8 [C, H, W], e.g. Atari) go through a Nature-DQN convolutional
encoder (scaled to [0, 1]) before the core.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import nn

from emrl.control.envs import is_image_space, obs_shape
from emrl.nn.core import State, build_core
from emrl.nn.heads import CategoricalHead, GaussianHead, ValueHead
from emrl.nn.mlp import MLPCore, orthogonal_init


class ConvEncoder(nn.Module):
    """Nature-DQN torso: uint8 [N, C, 84, 84] -> [N, 512]."""

    def __init__(self, channels: int, height: int, width: int, out_size: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            orthogonal_init(nn.Conv2d(channels, 32, 8, stride=4)), nn.ReLU(),  # type: ignore[arg-type]
            orthogonal_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),  # type: ignore[arg-type]
            orthogonal_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),  # type: ignore[arg-type]
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.net(torch.zeros(1, channels, height, width)).shape[-1]
        self.fc = nn.Sequential(orthogonal_init(nn.Linear(n, out_size)), nn.ReLU())
        self.output_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x.float() / 255.0))


class Agent(nn.Module):
    """Encoder -> core -> (policy head, value head); see the module docstring."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        core: str = "mlp",
        core_kwargs: dict[str, Any] | None = None,
        separate_value: bool = True,
        gaussian_state_dependent_std: bool = False,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        core_kwargs = dict(core_kwargs or {})
        self.obs_shape = obs_shape(observation_space)
        self.image = is_image_space(observation_space)
        if self.image:
            self.encoder: nn.Module | None = ConvEncoder(*self.obs_shape)
            in_size = self.encoder.output_size  # type: ignore[union-attr]
        else:
            self.encoder = None
            in_size = int(torch.tensor(self.obs_shape).prod())
        self.core_name = core
        self.core = build_core(core, in_size, **core_kwargs)
        self.value_core: MLPCore | None = None
        if separate_value and core == "mlp":
            self.value_core = MLPCore(in_size, **core_kwargs)
        if isinstance(action_space, gym.spaces.Discrete):
            self.policy_head: nn.Module = CategoricalHead(self.core.output_size, int(action_space.n))
        else:
            self.policy_head = GaussianHead(
                self.core.output_size, int(action_space.shape[0]),
                state_dependent_std=gaussian_state_dependent_std, init_std=init_std,
            )
        vsize = self.value_core.output_size if self.value_core is not None else self.core.output_size
        self.value_head = ValueHead(vsize)

    @property
    def discrete(self) -> bool:
        return bool(self.policy_head.discrete)

    @property
    def stateful(self) -> bool:
        return self.core_name != "mlp"

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        return self.core.initial_state(batch_size, device)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [T, B, *obs_shape] -> [T, B, D]."""
        T, B = obs.shape[:2]
        if self.encoder is not None:
            return self.encoder(obs.reshape(T * B, *self.obs_shape)).reshape(T, B, -1)
        return obs.reshape(T, B, -1).float()

    def forward(  # type: ignore[override]
        self, obs: torch.Tensor, state: State, reset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """obs [T, B, ...], state, reset bool [T, B] -> (params [T, B, P], value [T, B], state)."""
        x = self.encode(obs)
        h, new_state = self.core(x, state, reset)
        params = self.policy_head(h)
        if self.value_core is not None:
            hv, _ = self.value_core(x, (), reset)
            value = self.value_head(hv)
        else:
            value = self.value_head(h)
        return params, value, new_state
