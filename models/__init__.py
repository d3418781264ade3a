"""Networks (2-D ResNets, the 1-D spectrum ResNet, the contrastive model, the conditional 1-D UNet, the CNN
baseline), their builders (``models.build``), checkpoint I/O (``models.checkpoint``) and ``load_model``
(``models.loading``): everything about a model from its config to its checkpoint and back."""

from models.contrastive import ContrastiveModel, nt_xent, score, score_candidates
from models.resnet1d import SpectrumResNet
from models.resnet2d import resnet18, resnet50
from models.unet1d import ConditionalDenoiser, UNet1d, upsample_lowres

__all__ = [
    "ContrastiveModel",
    "nt_xent",
    "score",
    "score_candidates",
    "SpectrumResNet",
    "resnet18",
    "resnet50",
    "ConditionalDenoiser",
    "UNet1d",
    "upsample_lowres",
]
