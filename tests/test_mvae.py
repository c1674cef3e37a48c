"""MVAE: gradients, estimator behaviour and generation."""
import pytest
import torch

from tests.models_common import generation_shapes, iwae_not_decreasing_in_k, step_changes_every_parameter


@pytest.mark.parametrize("contrastive", [None, "iwae", "cubo"])
def test_one_step_changes_every_parameter(contrastive):
    step_changes_every_parameter("mvae", contrastive)


def test_iwae_not_decreasing_in_k():
    iwae_not_decreasing_in_k("mvae")


def test_generation():
    model, xs = generation_shapes("mvae")
    assert model.joint_generate(xs, 1).shape == (4, 3, 32, 32)


def test_joint_posterior_is_tighter_than_each_expert():
    from engine.models import build_model
    from tests.models_common import L, batch

    model = build_model("mnist-svhn", "mvae", latent_dim=L)
    xs = batch(4)
    _, s_joint = model.joint_posterior(xs)
    for m in range(2):
        _, s_m = model.unimodal_posterior(m, xs[m])
        assert torch.all(s_joint < s_m)
