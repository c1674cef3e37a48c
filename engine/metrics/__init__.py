"""Evaluation metrics (paper §4.2, Appendix G): latent accuracy, coherence, diversity, likelihoods.

Modules: ``classifiers`` (digit CNNs), ``latent``, ``coherence``, ``likelihood``; ``cca`` (CUB).
"""
