"""Capabilities, not types: models say what they can do; nothing outside engine/models checks a
model's class, and nothing (engine/models' factory included) compares a model-family string."""
import ast
from pathlib import Path

import pytest
import torch

from engine.models import MODEL_CLASSES, build_model
from engine.registry import FAMILY_NAMES, families_with, model_class

ROOT = Path(__file__).resolve().parents[1]
MODEL_CLASS_NAMES = {cls.__name__ for cls in MODEL_CLASSES.values()} | {"MultimodalVAE"}
FAMILY_STRINGS = set(FAMILY_NAMES)


def _sources(models: bool = False):
    """Every Python module of the project outside tests; those of engine/models only if ``models``."""
    inside = ROOT / "engine" / "models"
    files = [ROOT / "streamlit_app.py", *(ROOT / "engine").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py"),
             *(ROOT / "bench").rglob("*.py")]
    return [f for f in files if models or inside not in f.parents]


def _names(node):
    """The bare names a class argument of isinstance / issubclass refers to."""
    parts = node.elts if isinstance(node, ast.Tuple) else [node]
    return {p.id if isinstance(p, ast.Name) else p.attr for p in parts if isinstance(p, (ast.Name, ast.Attribute))}


def _family_strings(node):
    """Family-name string constants compared in ``node`` (directly or inside a tuple / list / set)."""
    parts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {p.value for p in parts if isinstance(p, ast.Constant) and p.value in FAMILY_STRINGS}


def _violations(path: Path, type_checks: bool = True) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (type_checks and isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2
                and _names(node.args[1]) & MODEL_CLASS_NAMES):
            found.append(f"{path}:{node.lineno}: {node.func.id} on a model class")
        if isinstance(node, ast.Compare):
            hits = set().union(*(_family_strings(n) for n in [node.left, *node.comparators]))
            if hits:
                found.append(f"{path}:{node.lineno}: compares the family string(s) {sorted(hits)}")
    return found


def test_no_type_checks_or_family_comparisons_outside_models():
    sources = _sources()
    assert any(f.name == "relatedness.py" for f in sources) and any(f.parent.name == "dashboard" for f in sources)
    assert [v for f in sources for v in _violations(f)] == []


def test_the_model_factory_asks_the_class_not_the_family_name():
    models = [f for f in _sources(models=True) if f not in _sources()]
    assert ROOT / "engine" / "models" / "__init__.py" in models
    assert [v for f in models for v in _violations(f, type_checks=False)] == []


def test_the_scan_catches_what_it_is_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('if isinstance(model, MMVAE):\n    pass\nif family != "mmvae":\n    pass\n'
                   'if fam in ("mvae", "jmvae"):\n    pass\nif isinstance(m, (int, models.JMVAE)):\n    pass\n')
    assert len(_violations(bad)) == 4 and len(_violations(bad, type_checks=False)) == 2


@pytest.mark.parametrize("family", sorted(MODEL_CLASSES))
def test_capabilities_agree_with_the_model(family):
    cls = model_class(family)
    assert cls is MODEL_CLASSES[family]
    assert cls.has_pairwise_kernel == hasattr(cls, "pairwise_log_weights")
    assert cls.default_estimator in ("elbo", "iwae")
    assert not cls.supports_looser or cls.mixture_posterior          # the looser bound needs strata
    model = build_model("mnist-svhn", family, latent_dim=3, alpha=0.5)
    assert type(model) is cls and getattr(model, "alpha", 0.5) == 0.5     # alpha reaches the families that take it
    xs = [torch.rand(2, 1, 28, 28), torch.rand(2, 3, 32, 32)]
    assert (model.joint_posterior(xs) is None) == cls.mixture_posterior
    assert model.n_strata == (2 if cls.mixture_posterior else 1)
    item = [model.noise((4, 2, 3)) for _ in range(2)]
    enc = model(xs, 4, model.forward_noise(item))
    J = torch.tensor([[0, 1, 1], [1, 0, 1]])
    noise = model.pairs_noise(item, J)
    assert model.log_weights(enc, J, noise).shape == (4 * model.n_strata, 3)
    assert (noise is None) == (model.draw_pair_noise(3, 4) is None) == cls.mixture_posterior


def test_messages_name_the_families_with_a_capability():
    assert families_with("supports_dreg") == families_with("supports_looser") == "MMVAE"
