"""JMVAE: gradients, estimator behaviour and generation."""
import pytest
import torch

from tests.models_common import generation_shapes, iwae_not_decreasing_in_k, step_changes_every_parameter


@pytest.mark.parametrize("contrastive", [None, "iwae", "cubo"])
def test_one_step_changes_every_parameter(contrastive):
    step_changes_every_parameter("jmvae", contrastive)


def test_iwae_not_decreasing_in_k():
    iwae_not_decreasing_in_k("jmvae")


def test_generation():
    model, xs = generation_shapes("jmvae")
    assert model.joint_generate(xs, 0).shape == (4, 1, 28, 28)


def test_alpha_weights_the_kl_terms():
    from engine.models import build_model
    from tests.models_common import L, batch

    torch.manual_seed(0)
    model = build_model("mnist-svhn", "jmvae", latent_dim=L, alpha=0.0)
    xs = batch(4)
    enc = model(xs, 2)
    a = model.base_objective(enc, "elbo")
    model.alpha = 1.0
    b = model.base_objective(enc, "elbo")
    assert torch.all(b < a)
