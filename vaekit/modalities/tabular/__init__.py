"""Table modality: rows of CSV, Parquet or .npz files, numeric and categorical columns, missing values masked."""

from vaekit.modalities.registry import Modality
from vaekit.modalities.tabular.data import TableDataModule
from vaekit.modalities.tabular.model import TableVAE

MODALITY = Modality(name="tabular", model=TableVAE, datamodule=TableDataModule)
__all__ = ["MODALITY", "TableDataModule", "TableVAE"]
