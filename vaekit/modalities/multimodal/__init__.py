"""The joint multimodal VAE: any installed modalities as parts of one model, a plugin like the others.

``model`` (the joint VAE), ``data`` (paired data over the parts' own data modules) and ``coherence``
(cross-modal coherence with ONNX classifiers). Checkpoints of vaekit 0.2 name the classes by their former
places in the core, which still resolve.
"""

from vaekit.modalities.multimodal.data import PairedDataModule
from vaekit.modalities.multimodal.model import JointVAE
from vaekit.modalities.registry import Modality

MODALITY = Modality(
    name="multimodal",
    model=JointVAE,
    datamodule=PairedDataModule,
    former_names={"vaekit.core.joint.JointVAE": JointVAE, "vaekit.core.paired.PairedDataModule": PairedDataModule},
)

__all__ = ["MODALITY", "JointVAE", "PairedDataModule"]
