"""EfficientNet-Lite0: strict weight loading, a real-photo ImageNet prediction, and feature shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.features import cached_features, extract_features, load_pixels
from engine.errors import DataError
from engine.models.efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0, preprocess, weights_path

DAISY = 985
PLAUSIBLE_FLOWER_TOP1 = {DAISY, 309, 738, 883, 947}   # daisy, bee, pot (flowerpot), vase, mushroom


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def flower() -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("flower.jpg"))


def test_weights_load_strictly():
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    result = EfficientNetLite0().load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) > 4_500_000


def test_block_table_and_lite_traits(model):
    assert len(model._blocks) == 16
    assert not any("_se_" in key or "squeeze" in key for key in model.state_dict())
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    kernels = [b._depthwise_conv.kernel_size[0] for b in model._blocks]
    assert kernels == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]


def test_classifies_sample_flower_photo(model, flower):
    x = preprocess(load_pixels(flower)[None])
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in PLAUSIBLE_FLOWER_TOP1 and DAISY in top5, top5
    assert probs[DAISY] > 0.2


def test_feature_extraction_shapes(model, flower, tmp_path):
    small = flower.resize((120, 80))
    feats = extract_features([flower, small], "efficientnet-lite0", batch_size=1, progress=False)
    assert feats.shape == (2, 1280) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert (feats >= 0).all() and (feats <= 6).all()                 # pooled ReLU6 activations
    with torch.inference_mode():
        direct = model.features(preprocess(load_pixels(flower)[None]))[0].numpy()
    np.testing.assert_allclose(feats[0], direct, rtol=1e-4, atol=1e-5)
    path = tmp_path / "flower.jpg"
    flower.save(path)
    cached = cached_features(tmp_path, ["a"], [path], "efficientnet-lite0")
    assert cached.shape == (1, 1280) and (tmp_path / "features_efficientnet-lite0.npy").is_file()
    np.testing.assert_array_equal(cached_features(tmp_path, ["a"], [tmp_path / "gone.jpg"], "efficientnet-lite0"),
                                  cached)


def test_resnet_without_weights_offline_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(DataError, match="--features efficientnet-lite0"):
        extract_features([Image.new("RGB", (32, 32))], "resnet101", download=False, progress=False)
