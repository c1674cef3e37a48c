"""Contrastive multimodal VAE engine ("Relating by Contrasting", Shi et al., ICLR 2021)."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load(path: str | Path, device: str = "auto"):
    """Rebuild a trained model from its checkpoint alone (a run directory or checkpoint.pt).

    Returns the model in eval mode, on the chosen device, with ``model.config`` (RunConfig) and
    ``model.trained_step`` (the training step of these weights; best.pt is often an earlier step
    than the run's last) set.
    Truncated, foreign-version or mismatched checkpoints raise CheckpointError.
    """
    # Imported here: every ``import engine.<module>`` runs this file, which stays torch-free.
    from engine.checkpoints import config_of, load_state, read_checkpoint, resolve
    from engine.device import pick_device
    from engine.registry import model_from_config

    p = resolve(path)
    ck = read_checkpoint(p)
    cfg = config_of(ck, p)
    model = model_from_config(cfg)
    load_state(model, {k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()}, p)
    model.config = cfg
    model.source_path = p
    model.trained_step = ck.get("step")
    return model.to(pick_device(device)).eval()
