"""Diagnostic (H17): resume an MMVAE-family run with term 2 of eq. (4) reaching only the encoders
(ARM=enc, the default) or only the decoders (ARM=dec), to find which route costs MNIST->SVHN.

ARM=enc scores the negatives on a second decode of the same latents through the decoders with
detached parameters (term 2's gradient reaches the encoders through z, not the decoders); ARM=dec
on a decode of detached latents with detached posteriors (it reaches the decoders only). Values are
unchanged; only the gradient's route differs. Experiment only, not an engine option.

    ARM=enc PYTHONPATH=. python reports/diagnosis/term2_route.py RUN_DIR
"""
import os, sys
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
import torch
from torch.func import functional_call
from engine.models.base import Encoded
from engine.models.mmvae import MMVAE

_log_weights = MMVAE.log_weights

def _decode_frozen(mod, z):
    params = {k: v.detach() for k, v in mod.decoder.named_parameters()}
    params.update(dict(mod.decoder.named_buffers()))
    lead = z.shape[:-1]
    out = mod._run(lambda x: functional_call(mod.decoder, params, (x,)), z.reshape(-1, z.shape[-1]))
    return out.reshape(*lead, *out.shape[1:])

def log_weights(self, enc, J=None, noise=None, scaled=True, detach_q=False):
    if J is None or not torch.is_grad_enabled():
        return _log_weights(self, enc, J, noise, scaled, detach_q)
    if "frozen" not in enc.extra:
        dec_only = os.environ.get("ARM", "enc") == "dec"
        z_all = torch.stack(enc.z).detach() if dec_only else torch.stack(enc.z)
        decoded = [mod.decode(z_all) if dec_only else _decode_frozen(mod, z_all) for mod in self.mods]
        strata = [d.unbind(0) for d in decoded]
        params = [[strata[n][s] for n in range(len(self.mods))] for s in range(len(enc.xs))]
        loc, scale, z = ([t.detach() for t in enc.loc], [t.detach() for t in enc.scale], list(z_all.unbind(0))) \
            if dec_only else (enc.loc, enc.scale, enc.z)
        enc.extra["frozen"] = Encoded(enc.xs, enc.K, loc, scale, enc.noise, z, params, {"decoded": decoded})
    return _log_weights(self, enc.extra["frozen"], J, noise, scaled, detach_q)

MMVAE.log_weights = log_weights
from engine.cli import main
sys.exit(main(["train", "--resume", "--out", sys.argv[1], "--no-progress"]))
