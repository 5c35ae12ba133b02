"""The ResNet pixel encoder that feeds the transformer cores (spec §8)."""

from __future__ import annotations

import pytest
import torch

from emrl.errors import ConfigError
from emrl.nn.encoders import ResNetEncoder


@pytest.mark.parametrize("shape", [(4, 84, 84), (10, 10, 10)])
def test_resnet_encoder_shapes_and_gradients(shape):
    torch.manual_seed(0)
    enc = ResNetEncoder(shape, out_size=32)
    x = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    y = enc(x)
    assert y.shape == (3, 32) and torch.isfinite(y).all()
    # uint8 pixels are scaled to [0, 1]; floats are used as they are.
    torch.testing.assert_close(y, enc(x.float() / 255.0))
    y.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    # Different images give different features.
    assert (enc(x[:1]) - enc(x[1:2])).abs().max() > 0


def test_resnet_encoder_bad_shape():
    with pytest.raises(ConfigError, match="image shape"):
        ResNetEncoder((84, 84))
