"""The PyTorch side of ``mammo_fusion``: the per-view network, the candidate classifier and the bundle's
``model.pt`` (training, GPU serving).

Kept apart from ``ai_engine.detectors.mammo_fusion`` so that CPU serving (ONNX Runtime) does not
import MONAI or build the network.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet, Classifier
from torch import nn

from ai_engine.bundle import Bundle
from ai_engine.clinical_features import NOTE_DIM, feature_names
from ai_engine.detectors.mammo_fusion import CANDIDATE_CROP, CHANNELS, IMAGE_FEATURES
from ai_engine.fusion import FusionHead
from ai_engine.results import Task

UNET_FEATURES = (8, 16, 32, 64, 96, 8)
CLASSIFIER_CHANNELS = (16, 32, 64, 96)


class MammoNetwork(nn.Module):
    """Per-view network: MONAI BasicUNet, two sigmoid maps (malignant mass, calcification cluster)."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = BasicUNet(spatial_dims=2, in_channels=2, out_channels=len(CHANNELS), features=UNET_FEATURES,
                              norm=("batch", {"affine": True}))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """views [B, 2, H, W] (H, W multiples of 16) -> probabilities [B, 2, H, W]."""
        return torch.sigmoid(self.unet(views))


class CandidateClassifier(nn.Module):
    """Malignancy probability of a candidate from its fine-grid crop: MONAI Classifier (residual units, 4 strides)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Classifier(in_shape=(1, CANDIDATE_CROP, CANDIDATE_CROP), classes=1, channels=CLASSIFIER_CHANNELS,
                              strides=(2,) * len(CLASSIFIER_CHANNELS), num_res_units=1, norm="batch", dropout=0.1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """crops [N, 1, CANDIDATE_CROP, CANDIDATE_CROP] -> probabilities [N]."""
        return torch.sigmoid(self.logits(crops))

    def logits(self, crops: torch.Tensor) -> torch.Tensor:
        """The logits [N] (training uses them with a numerically stable loss)."""
        return self.net(crops)[:, 0]


class MammoFusionModel(nn.Module):
    """Container saved as ``models/model.pt``: per-view network, candidate classifier, deployed fusion head."""

    def __init__(self, network: MammoNetwork, classifier: CandidateClassifier, fusion: FusionHead) -> None:
        super().__init__()
        self.network = network
        self.classifier = classifier
        self.fusion = fusion


def load_eager_model(bundle: Bundle) -> MammoFusionModel:
    """The bundle's ``model.pt`` as an eager model (the dynamic fusion head)."""
    model = MammoFusionModel(MammoNetwork(), CandidateClassifier(),
                             FusionHead(len(IMAGE_FEATURES), len(feature_names(Task.MAMMOGRAPHY)), NOTE_DIM,
                                        mode="dynamic"))
    model.load_state_dict(torch.load(bundle.weights_path, map_location="cpu", weights_only=True))
    return model.eval()
