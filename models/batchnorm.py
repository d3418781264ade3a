"""Re-estimate the BatchNorm statistics of a trained model's image encoder ("precise BN").

The 2-D ResNets (models/resnet2d.py) normalise with BatchNorm. Two things make their running statistics a
poor match for the weights that are used:

- the shipped and evaluated weights are the EMA of the trained ones (``train.ema_decay``), but the running
  statistics are the trained model's (ignite's EMAHandler shares them): they describe other weights;
- the running statistics are an exponential average (momentum 0.1) over the last ~10 training batches, and
  standardised nanomaggie images are heavy-tailed (a bright galaxy or star in a batch of 64 moves its
  statistics a lot), so they follow the last few batches rather than the training set.

In eval mode the networks then see shifted features: the reference CNN predicted redshifts biased by -0.0084
(median of dz / (1 + z) on the validation split of the reference mock) where its own training-mode forward
was unbiased. :func:`recalibrate_batchnorm` replaces every BatchNorm's running mean and variance by their
average over many training batches computed WITH the weights in use (cumulative average, momentum None),
changing nothing else; a model without BatchNorm is left as it is. (docs/MODELS.md, "BatchNorm statistics".)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch


def batchnorm_layers(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers to re-estimate: all of them, except those of a frozen image encoder
    (``model.freeze_image_encoder``), whose source statistics are what the rest of the model trained with."""
    frozen = set()
    if getattr(model, "image_encoder_frozen", False):
        frozen = {id(m) for m in model.image_encoder.modules()}
    return [m for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in frozen]


def image_forward(model: torch.nn.Module) -> Callable:
    """The image path of a network of this project: ``f(images, photometry)`` running every BatchNorm."""
    for name in ("encode_context", "encode_image"):       # diffusion UNet, contrastive model
        if hasattr(model, name):
            return getattr(model, name)
    return model                                         # the supervised CNN: its forward


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
                          forward: Callable | None = None) -> int:
    """Set the running statistics of every BatchNorm in ``model`` to their average over ``batches``.

    ``batches`` yields (images, photometry or None) as the model's image path takes them (standardised,
    augmented as in training); ``forward`` is that path (default: :func:`image_forward`). Only the BatchNorm
    layers run in training mode; everything else stays in eval mode, and no parameter changes. Returns the
    number of images used (0 and nothing changed for a model without BatchNorm)."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    forward = forward or image_forward(model)
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in layers]
    for m in layers:
        # own storage first: ignite's EMAHandler ASSIGNS the trained model's buffers to the EMA model
        # (``ema_b.data = model_b.data``), so without this the trained model's statistics would change too
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(m, name, getattr(m, name).clone())
        m.reset_running_stats()
        m.momentum = None                                 # cumulative average over all batches
        m.train()
    n = 0
    try:
        for images, photometry in batches:
            forward(images, photometry)
            n += images.shape[0]
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.train(was_training)
    if n == 0:
        raise ValueError("recalibrate_batchnorm: no batches")
    return n


def survey_batches(survey_path, band_mean, band_std, photometry: bool, n: int = 4096, batch: int = 64,
                   seed: int = 0):
    """Batches of ``n`` TRAIN-split images of a survey file (a seeded random choice), standardised with the
    MODEL's band statistics (a shipped model meeting a survey: ``models.reference recalibrate``; training
    uses its own survey cache instead, training/engine.py) and augmented as in training (seeded), with their
    photometry features when the model takes them."""
    import h5py

    from datasets.galaxy import ImageAugment
    from datasets.photometry import image_features
    from datasets.schema import SPLIT_CODES

    with h5py.File(survey_path, "r") as f:
        train = np.flatnonzero(f["split"][:] == SPLIT_CODES["train"])
        rows = np.sort(np.random.default_rng(seed).choice(train, min(n, train.size), replace=False))
        images = f["images"][rows].astype(np.float32)
    mean = torch.tensor(np.asarray(band_mean, np.float32))[None, :, None, None]
    std = torch.tensor(np.asarray(band_std, np.float32))[None, :, None, None]
    gen = torch.Generator().manual_seed(seed)
    aug = ImageAugment()
    for s in range(0, len(rows), batch):
        raw = images[s:s + batch]
        x = aug((torch.from_numpy(raw) - mean) / std, train=True, generator=gen)
        yield x, (torch.from_numpy(image_features(raw)) if photometry else None)
