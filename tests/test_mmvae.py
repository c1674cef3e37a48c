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


@pytest.mark.parametrize("looser", [False, True])
def test_dreg_keeps_decoder_gradients_of_iwae(looser):
    """DReG only changes the encoder's gradient estimator; decoder gradients equal IWAE's (of the
    tight stratified bound, or with ``looser`` of the looser one: m_dreg_looser vs m_iwae_looser)."""
    from engine import objectives as O
    from engine.models import build_model
    from tests.models_common import L, batch

    torch.manual_seed(0)
    model = build_model("mnist-svhn", "mmvae", latent_dim=L).double()
    xs = [x.double() for x in batch()]
    noise = [model.noise((3, 6, L)).double() for _ in range(2)]
    grads = {}
    for est in ("iwae", "dreg"):
        model.zero_grad()
        enc = model(xs, 3, noise)
        if est == "dreg":
            value = model.base_objective(enc, "dreg", looser=looser)
        else:
            value = O.looser(model.log_weights(enc), 2) if looser else model.base_objective(enc, "iwae")
        value.sum().backward()
        grads[est] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    for k in (k for k in grads["iwae"] if "decoder" in k):
        assert torch.allclose(grads["iwae"][k], grads["dreg"][k], atol=1e-8, rtol=1e-6), k
    assert any(not torch.allclose(grads["iwae"][k], grads["dreg"][k]) for k in grads["iwae"] if "encoder" in k)


def test_dreg_looser_normalises_within_each_stratum():
    """With one stratum the looser and tight DReG surrogates agree; with two, the looser one is the
    mean over strata of each stratum's own self-normalised sum (a loop over strata as reference)."""
    from engine import objectives as O

    g = torch.Generator().manual_seed(3)
    lw = torch.randn(8, 5, generator=g, dtype=torch.float64) * 4
    one = [torch.zeros(8, 5, 2, dtype=torch.float64)]
    assert torch.allclose(O.dreg(lw, one, looser=True), O.dreg(lw, one))
    two = [torch.zeros(4, 5, 2, dtype=torch.float64) for _ in range(2)]
    ref = torch.stack([(torch.softmax(lw[s * 4:(s + 1) * 4], 0) * lw[s * 4:(s + 1) * 4]).sum(0) for s in range(2)]).mean(0)
    assert torch.allclose(O.dreg(lw, two, looser=True), ref)
    assert not torch.allclose(O.dreg(lw, two, looser=True), O.dreg(lw, two))


def _cub_items(n_img, n_cap, V=30, F=12):
    g = torch.Generator().manual_seed(1)
    caps = torch.randint(2, V, (n_cap, 32), generator=g)
    for i in range(n_cap):                       # <eos> at varying positions, padding after
        caps[i, 5 + 3 * i] = 1
        caps[i, 6 + 3 * i:] = 0
    return torch.randn(n_img, F, generator=g), caps


@pytest.mark.parametrize("dataset", ["mnist-svhn", "cub-synthetic"])
def test_pairwise_log_weights_equal_a_loop_over_pairs(dataset):
    """The all-pairs kernel equals forward + log_weights run on each pair (i, j) alone."""
    from engine.models import build_model

    torch.manual_seed(0)
    if dataset == "mnist-svhn":
        model = build_model(dataset, "mmvae", latent_dim=4).eval()
        xs = [torch.rand(4, 1, 28, 28), torch.rand(3, 3, 32, 32)]
    else:
        model = build_model(dataset, "mmvae", latent_dim=5, vocab_size=30, feature_dim=12).eval()
        xs = list(_cub_items(4, 3))
    K = 3
    noise = [model.noise((K, len(x), model.latent_dim)) for x in xs]
    fast = model.pairwise_log_weights(xs, noise, budget=50)          # tiny budget: many chunks
    assert fast.shape == (2 * K, 4, 3)
    with torch.no_grad():
        for i in range(4):
            for j in range(3):
                enc = model([xs[0][i:i + 1], xs[1][j:j + 1]], K, noise=[noise[0][:, i:i + 1], noise[1][:, j:j + 1]])
                ref = model.log_weights(enc)[:, 0]
                torch.testing.assert_close(fast[:, i, j], ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dataset", ["mnist-svhn", "cub-synthetic"])
def test_stacked_likelihoods_equal_per_stratum_likelihoods(dataset):
    """Log weights scored over the stacked decode (one likelihood call per modality) equal, in value
    and gradient, those scored stratum by stratum from ``enc.params`` (the general pair path, asked
    for the identity pairing plus one extra pair, so that it is not taken for permutation blocks)."""
    from engine.models import build_model

    torch.manual_seed(0)
    if dataset == "mnist-svhn":
        model = build_model(dataset, "mmvae", latent_dim=4)
        xs = [torch.rand(3, 1, 28, 28), torch.rand(3, 3, 32, 32)]
    else:
        model = build_model(dataset, "mmvae", latent_dim=5, vocab_size=30, feature_dim=12)
        xs = list(_cub_items(3, 3))
    model = model.double()
    xs = [x.double() if x.is_floating_point() else x for x in xs]
    noise = [model.noise((2, 3, model.latent_dim)).double() for _ in xs]
    weights = [p for p in model.parameters() if p.requires_grad]
    pairs = torch.tensor([0, 1, 2, 0]).expand(2, 4)
    out = []
    for J in (None, pairs):
        enc = model(xs, 2, noise=noise)
        for detach_q in (False, True):
            lw = model.log_weights(enc, J, detach_q=detach_q)[:, :3]
            out.append((lw, torch.autograd.grad(lw.sum(), weights, retain_graph=True)))
    for (lw_a, g_a), (lw_b, g_b) in zip(out[:2], out[2:]):
        torch.testing.assert_close(lw_a, lw_b)
        for a, b in zip(g_a, g_b):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dataset", ["mnist-svhn", "cub-synthetic"])
def test_pairwise_log_likelihood_equals_broadcast_log_likelihood(dataset):
    from engine.models.modalities import Modality, build_modalities

    torch.manual_seed(0)
    mods = build_modalities(dataset, 4, vocab_size=30, feature_dim=12)
    data = [torch.rand(3, 1, 28, 28), torch.rand(3, 3, 32, 32)] if dataset == "mnist-svhn" else list(_cub_items(3, 3))
    for mod, x in zip(mods, data):
        params = mod.decode(torch.randn(5, 4))
        ref = mod.log_likelihood(params.unsqueeze(1), x.unsqueeze(0))            # (5, 3) by broadcasting
        torch.testing.assert_close(mod.pairwise_log_likelihood(params, x), ref, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(Modality.pairwise_log_likelihood(mod, params, x), ref)   # the generic default


def test_grouped_laplace_likelihood_equals_the_broadcast_reference():
    """The batched cdist kernel (each item's K decodes at G chosen items) equals the plain
    broadcast of Modality.log_likelihood, in value and gradient; so does the (K, B) own-item path."""
    from engine.models.modalities import SVHN, Modality

    torch.manual_seed(0)
    mod = SVHN(latent_dim=4).double()
    params = torch.rand(3, 5, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    x = torch.rand(4, 5, 3, 32, 32, dtype=torch.float64)
    fast = mod.grouped_log_likelihood(params, x)
    (g_fast,) = torch.autograd.grad(fast.sum(), params)
    ref = Modality.grouped_log_likelihood(mod, params, x)            # broadcasting l1_distance
    (g_ref,) = torch.autograd.grad(ref.sum(), params)
    assert fast.shape == (3, 4, 5)
    assert torch.allclose(fast, ref, rtol=1e-10) and torch.allclose(g_fast, g_ref)
    own = mod.log_likelihood(params, x[0])
    assert torch.allclose(own, ref[:, 0], rtol=1e-10)
