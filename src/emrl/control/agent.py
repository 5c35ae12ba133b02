"""The actor-critic network: encoder -> core -> policy head and value head.

``Agent.forward(obs[T, B, ...], state, reset[T, B])`` returns the policy parameters
[T, B, P] (logits, or Gaussian ``cat(mean, std)``), the values [T, B] and the core
state after step T-1. With the stateless ``mlp`` core the value function may use its
own MLP (``separate_value=True``, the usual choice for small PPO agents); memory cores
(lstm, trxl, gtrxl) share the core between the heads.

Image observations (uint8 [C, H, W], e.g. Atari) go through a convolutional encoder
(scaled to [0, 1]) before the core: the Nature-DQN torso (``encoder="nature"``) or the
IMPALA ResNet torso of spec §8 (``encoder="resnet"``, :class:`emrl.nn.encoders.ResNetEncoder`).

Spec §8 extra core inputs (``prev_action_reward=True``): the core sees, next to the
encoded observation, the previous reward r_{t-1} and the previous action a_{t-1}
(one-hot for ``Discrete`` actions, the action vector for ``Box``), both zero at the
first step of an episode. The caller passes them as ``prev_action`` [T, B, A] (already
one-hot encoded, see :meth:`Agent.encode_action`) and ``prev_reward`` [T, B]; the actor
keeps them per environment and stores them in the rollout, so the update recomputes
with exactly the inputs the actor saw.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import nn

from emrl.control.envs import is_image_space, obs_shape
from emrl.errors import ConfigError
from emrl.nn.build import build_core
from emrl.nn.core import State, check_core_inputs
from emrl.nn.encoders import ResNetEncoder
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


ENCODERS = ("nature", "resnet")


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
        encoder: str = "nature",
        prev_action_reward: bool = False,
    ) -> None:
        super().__init__()
        core_kwargs = dict(core_kwargs or {})
        self.obs_shape = obs_shape(observation_space)
        self.image = is_image_space(observation_space)
        if encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {list(ENCODERS)}, got {encoder!r}")
        if encoder != "nature" and not self.image:
            raise ConfigError(
                f"encoder={encoder!r} needs image observations (uint8 [C, H, W]), got "
                f"{observation_space}; leave encoder='nature' (unused for vector observations)"
            )
        self.encoder_name = encoder
        if self.image:
            if encoder == "resnet":
                self.encoder: nn.Module | None = ResNetEncoder(self.obs_shape)  # type: ignore[arg-type]
            else:
                self.encoder = ConvEncoder(*self.obs_shape)
            in_size = self.encoder.output_size  # type: ignore[union-attr]
        else:
            self.encoder = None
            in_size = int(torch.tensor(self.obs_shape).prod())
        self.prev_action_reward = bool(prev_action_reward)
        if isinstance(action_space, gym.spaces.Discrete):
            self.action_enc_size = int(action_space.n)
        else:
            self.action_enc_size = int(action_space.shape[0])
        if self.prev_action_reward:  # + r_{t-1} and the encoded a_{t-1}
            in_size += 1 + self.action_enc_size
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

    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Actions [...] (int, Discrete) or [..., D] (Box) -> float [..., A] core inputs:
        one-hot for Discrete, the (clipped) action vector itself for Box."""
        if self.policy_head.discrete:
            return torch.nn.functional.one_hot(action.long(), self.action_enc_size).float()
        return action.float()

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [T, B, *obs_shape] -> [T, B, D]."""
        T, B = obs.shape[:2]
        if self.encoder is not None:
            return self.encoder(obs.reshape(T * B, *self.obs_shape)).reshape(T, B, -1)
        return obs.reshape(T, B, -1).float()

    def forward(  # type: ignore[override]
        self, obs: torch.Tensor, state: State, reset: torch.Tensor,
        prev_action: torch.Tensor | None = None, prev_reward: torch.Tensor | None = None,
        *, need_value: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """obs [T, B, ...], state, reset bool [T, B] -> (params [T, B, P], value [T, B], state).

        ``prev_action`` [T, B, A] (encoded, :meth:`encode_action`) and ``prev_reward``
        [T, B]: the spec §8 extra inputs, required when the agent was built with
        ``prev_action_reward=True`` (zero at episode starts; the caller's job) and
        refused otherwise. ``need_value=False`` skips the value function and returns
        ``None`` for it (the actor of a stateless agent computes the values of a whole
        rollout at once).
        """
        T, B = obs.shape[:2]
        x = self.encode(obs)
        if self.prev_action_reward:
            if prev_action is None or prev_reward is None:
                raise ValueError("this agent takes the previous action and reward as inputs "
                                 "(prev_action_reward=True): pass prev_action [T, B, A] and prev_reward [T, B]")
            if prev_action.shape != (T, B, self.action_enc_size) or prev_reward.shape != (T, B):
                raise ValueError(
                    f"prev_action must have shape [T, B, A] = {(T, B, self.action_enc_size)} and "
                    f"prev_reward [T, B] = {(T, B)}, got {tuple(prev_action.shape)} and "
                    f"{tuple(prev_reward.shape)}"
                )
            x = torch.cat([x, prev_reward.unsqueeze(-1).to(x.dtype), prev_action.to(x.dtype)], -1)
        elif prev_action is not None or prev_reward is not None:
            raise ValueError("prev_action/prev_reward given, but this agent was built with "
                             "prev_action_reward=False")
        # the heads run on 2-D features (one addmm each); an MLP core runs on them too
        # (MLPCore.forward_flat: the same values without the [T, B] views), and the
        # submodules' forward is called directly (no hooks: cheaper for small agents)
        x2 = None
        if type(self.core) is MLPCore:
            check_core_inputs(x, reset, self.core.input_size)
            x2 = x.reshape(T * B, self.core.input_size)
            h, new_state = self.core.forward_flat(x2), ()
        else:
            h, new_state = self.core(x, state, reset)
            h = h.reshape(T * B, -1)
        params = self.policy_head.forward(h).reshape(T, B, -1)
        if not need_value:
            return params, None, new_state
        if self.value_core is not None:
            if x2 is None:
                check_core_inputs(x, reset, self.value_core.input_size)
                x2 = x.reshape(T * B, self.value_core.input_size)
            value = self.value_head.forward(self.value_core.forward_flat(x2))
        else:
            value = self.value_head.forward(h)
        return params, value.reshape(T, B), new_state
