"""The joint multimodal VAE of the core (``vaekit.core.joint``), registered as the built-in plugins are."""

from vaekit.core.joint import JointVAE
from vaekit.core.paired import PairedDataModule
from vaekit.modalities.registry import Modality

MODALITY = Modality(name="multimodal", model=JointVAE, datamodule=PairedDataModule)
