"""CLIP-style contrastive image/spectrum model, NT-Xent loss and ranking scores.

One model per resolution (low-res 563 points, full-res 4500 points). The image branch is a 5-band
ResNet-50 (or ResNet-18) trunk plus a linear layer to the latent size; the spectrum branch is
``SpectrumResNet``. Both embeddings are L2-normalised so the score is a cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.conditioning import PhotometryEncoder, concat_photometry
from models.resnet1d import SpectrumResNet
from models.resnet2d import resnet18, resnet50
from surveys.description import SURVEY

__all__ = ["ContrastiveModel", "nt_xent", "score", "score_candidates", "IMAGE_ENCODERS"]

IMAGE_ENCODERS = {"resnet18": resnet18, "resnet50": resnet50}
# rows x pixels per spectrum-encoder call in CPU inference (encode_spectrum): 3 full-res spectra per call
# measured 2.1x faster than a whole batch of 128 on 2 threads (benchmarks/bench_spectrum_slices.py); 8 192
# and 32 768 were slower. A training step gained 1.01-1.06x at most, so training is not sliced.
CPU_SLICE_PIXELS = 16384


class ContrastiveModel(nn.Module):
    """Image and spectrum encoders into a shared, L2-normalised latent space.

    Parameters
    ----------
    image_encoder : {"resnet50", "resnet18"}
        Image trunk (the paper uses ResNet-50).
    latent_dim : int
        Shared latent size; 256 in both stages so that one config serves training and generation.
    spectrum_base, spectrum_mults : int, sequence of int
        Width of the 1-D ResNet (paper: 64, (1, 2, 4, 8, 16)).
    in_bands : int
        Image bands (default: the survey description's, 5 for SDSS ugriz).
    image_width : int
        Base width of the image ResNet (64 = standard; smaller for tests and CPU presets).
    photometry_features : int
        > 0: the image embedding also sees that many aperture-photometry features (models/conditioning.py),
        concatenated to the pooled ResNet features before the linear head; 0 = images only (paper).
    """

    def __init__(
        self,
        image_encoder: str = "resnet50",
        latent_dim: int = 256,
        spectrum_base: int = 64,
        spectrum_mults: tuple[int, ...] = (1, 2, 4, 8, 16),
        in_bands: int = SURVEY.n_bands,
        image_width: int = 64,
        photometry_features: int = 0,
    ):
        super().__init__()
        if image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder={image_encoder!r}: expected one of {sorted(IMAGE_ENCODERS)}")
        self.config = dict(
            image_encoder=image_encoder,
            latent_dim=latent_dim,
            spectrum_base=spectrum_base,
            spectrum_mults=tuple(spectrum_mults),
            in_bands=in_bands,
            image_width=image_width,
        )
        self.image_trunk = IMAGE_ENCODERS[image_encoder](in_bands, image_width)
        width = self.image_trunk.out_channels
        self.photometry = PhotometryEncoder(photometry_features, width) if photometry_features else None
        self.image_head = nn.Linear(width * (2 if photometry_features else 1), latent_dim)
        self.spectrum_encoder = SpectrumResNet(latent_dim, spectrum_base, tuple(spectrum_mults))

    def encode_image(self, img: torch.Tensor, photometry: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, bands, H, W) (and their (B, F) photometric features for a model built with
        ``photometry_features``) -> unit-norm embeddings (B, latent_dim)."""
        feat = concat_photometry(self.image_trunk(img), self.photometry, photometry, "contrastive model")
        return F.normalize(self.image_head(feat), dim=-1)

    def encode_spectrum(self, spec: torch.Tensor) -> torch.Tensor:
        """Spectra (B, L) or (B, 1, L) -> unit-norm embeddings (B, latent_dim).

        In CPU inference (autograd off) the batch goes through the encoder in slices of at most
        ``CPU_SLICE_PIXELS`` rows x pixels: the encoder normalises per spectrum, so a slice's embeddings are
        those of the whole batch to rounding, and a whole batch of full-res spectra overflows the caches
        (docs/BENCHMARKS.md)."""
        sliced = spec.device.type == "cpu" and not torch.is_grad_enabled()
        rows = max(1, CPU_SLICE_PIXELS // spec.shape[-1]) if sliced else spec.shape[0]
        if spec.shape[0] <= rows:
            return F.normalize(self.spectrum_encoder(spec), dim=-1)
        return torch.cat([F.normalize(self.spectrum_encoder(spec[s:s + rows]), dim=-1)
                          for s in range(0, spec.shape[0], rows)])

    def forward(self, img: torch.Tensor, spec: torch.Tensor,
                photometry: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(z_img, z_spec)``, both (B, latent_dim) and unit-norm."""
        return self.encode_image(img, photometry), self.encode_spectrum(spec)


def nt_xent(z_img: torch.Tensor, z_spec: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """NT-Xent (SimCLR) loss over the 2N embeddings of N (image, spectrum) pairs.

    Each of the 2N embeddings is a query whose positive is its partner in the pair and whose
    negatives are the other 2N - 2 embeddings (images and spectra alike); the loss is the mean
    cross-entropy over all 2N queries. Inputs are expected unit-norm.

    Parameters
    ----------
    z_img, z_spec : torch.Tensor
        (N, D) embeddings; row i of each forms a positive pair.
    temperature : float
        Softmax temperature (paper: 0.05).

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    if z_img.shape != z_spec.shape or z_img.ndim != 2:
        raise ValueError(
            f"nt_xent expects two (N, D) tensors of equal shape, got {z_img.shape}, {z_spec.shape}"
        )
    n = z_img.shape[0]
    z = torch.cat([z_img, z_spec], dim=0)
    # Similarities in float32: with temperature 0.05 the logits span +-20, too coarse for bf16.
    logits = (z @ z.T).float() / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def score(z_img: torch.Tensor, z_spec: torch.Tensor) -> torch.Tensor:
    """Ranking score = dot product of matching rows: (B, D), (B, D) -> (B,)."""
    return (z_img * z_spec).sum(dim=-1)


def score_candidates(z_img: torch.Tensor, z_cand: torch.Tensor) -> torch.Tensor:
    """Score K candidate spectra per image.

    Parameters
    ----------
    z_img : torch.Tensor
        (B, D) image embeddings.
    z_cand : torch.Tensor
        (B, K, D) candidate-spectrum embeddings for each image, or (M, D) to score every image
        against every spectrum (all pairs).

    Returns
    -------
    torch.Tensor
        (B, K) or (B, M) scores; higher is better.
    """
    if z_cand.ndim == 2:
        return z_img @ z_cand.T
    return torch.einsum("bd,bkd->bk", z_img, z_cand)
