"""The MLP engine (lipo_if.influence.mlp): its forward, backward and tangent factors against autograd."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from lipo_if.influence.mlp import MLP, layer_count, mlp_unsupported_reason
from lipo_if.model import ModelConfig, build_model


@pytest.fixture
def model():
    return build_model(ModelConfig(13, (7, 5)), seed=3).double()


def test_forward_matches_the_module_and_keeps_the_activations(model):
    X = torch.randn(11, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fwd = MLP.from_model(model).forward(X)
    torch.testing.assert_close(fwd.output[:, 0], model(X), rtol=1e-13, atol=1e-13)
    h1 = torch.relu(model.layers[0](X))
    torch.testing.assert_close(fwd.hidden[0], h1, rtol=0, atol=0)
    torch.testing.assert_close(fwd.masks[1], (model.layers[1](h1) > 0).double(), rtol=0, atol=0)
    assert fwd.inputs[0] is X and [m.shape[1] for m in fwd.masks] == [7, 5]


def test_tangent_factors_are_the_per_row_gradients_of_f(model):
    """∂f/∂W_l = δ_l ⊗ a_l and ∂f/∂b_l = δ_l, every row, against vmap(jacrev) of the module."""
    X = torch.randn(9, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pred, factors = MLP.from_model(model).tangent_factors(X)
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_row = vmap(jacrev(lambda p, x: functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)), in_dims=(None, 0))(params, X)
    torch.testing.assert_close(pred, model(X), rtol=1e-13, atol=1e-13)
    for l, (a, d) in enumerate(factors):
        torch.testing.assert_close(torch.einsum("bo,bi->boi", d, a), per_row[f"layers.{l}.weight"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(d, per_row[f"layers.{l}.bias"], rtol=1e-12, atol=1e-14)


def test_backward_stops_at_the_requested_layer(model):
    X = torch.randn(4, 13, dtype=torch.float64)
    mlp = MLP.from_model(model)
    fwd = mlp.forward(X)
    assert [l for l, _ in mlp.backward(fwd, torch.ones_like(fwd.output), stop=1)] == [2, 1]


def test_the_one_check_of_our_mlp():
    assert mlp_unsupported_reason(build_model(ModelConfig(3, (2,)))) is None
    assert "not the package's MLP" in mlp_unsupported_reason(nn.Sequential(nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="MLPRegressor"):
        layer_count({"layers.0.weight": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="one bias per weight"):
        MLP([torch.zeros(1, 2)], [])
