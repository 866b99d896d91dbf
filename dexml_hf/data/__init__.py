"""XMC datasets: ``XMCDataset`` (Arrow texts + CSR labels), the Hub layout, readers/writers, training views."""

from dexml_hf.data.dataset import FAMILIES, XMCDataset, infer_family, text_table
from dexml_hf.data.formats import (
    FORMATS,
    detect_format,
    read_bow,
    read_csv,
    read_lf,
    read_pecos,
    read_sparse,
    read_wiki500k,
    read_xmc,
    write_bow,
    write_csv,
    write_lf,
    write_pecos,
    write_sparse,
    write_wiki500k,
)
from dexml_hf.data.hub_layout import load_xmc_dataset, push_to_hub, save_to_folder

__all__ = [
    "FAMILIES",
    "FORMATS",
    "XMCDataset",
    "detect_format",
    "infer_family",
    "load_xmc_dataset",
    "push_to_hub",
    "read_bow",
    "read_csv",
    "read_lf",
    "read_pecos",
    "read_sparse",
    "read_wiki500k",
    "read_xmc",
    "save_to_folder",
    "text_table",
    "write_bow",
    "write_csv",
    "write_lf",
    "write_pecos",
    "write_sparse",
    "write_wiki500k",
]
