"""MMVAE: gradients, estimator behaviour and generation."""
import pytest
import torch

from tests.models_common import generation_shapes, iwae_not_decreasing_in_k, step_changes_every_parameter


@pytest.mark.parametrize("contrastive", [None, "iwae", "cubo"])
def test_one_step_changes_every_parameter(contrastive):
    step_changes_every_parameter("mmvae", contrastive)


def test_iwae_not_decreasing_in_k():
    iwae_not_decreasing_in_k("mmvae")


def test_generation():
    model, xs = generation_shapes("mmvae")
    with pytest.raises(ValueError, match="mixture"):
        model.joint_generate(xs, 0)


def test_dreg_keeps_decoder_gradients_of_iwae():
    """DReG only changes the encoder's gradient estimator; decoder gradients equal IWAE's."""
    from engine.models import build_model
    from tests.models_common import L, batch

    torch.manual_seed(0)
    model = build_model("mnist-svhn", "mmvae", latent_dim=L).double()
    xs = [x.double() for x in batch()]
    noise = [model.noise((3, 6, L)).double() for _ in range(2)]
    grads = {}
    for est in ("iwae", "dreg"):
        model.zero_grad()
        model.base_objective(model(xs, 3, noise), est).sum().backward()
        grads[est] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    for k in (k for k in grads["iwae"] if "decoder" in k):
        assert torch.allclose(grads["iwae"][k], grads["dreg"][k], atol=1e-8, rtol=1e-6), k
    assert any(not torch.allclose(grads["iwae"][k], grads["dreg"][k]) for k in grads["iwae"] if "encoder" in k)
