"""XMC datasets: ``XMCDataset`` (Arrow texts + CSR labels), the format registry, readers/writers, the Hub layout.

``load_xmc_dataset(source, format=None, ...)`` reads anything (a local folder/file in a registered format,
``"synthetic"`` or a Hub dataset id); ``convert_dataset(src, dst, ...)`` converts atomically.
"""

from dexml_hf.data.convert import convert_dataset
from dexml_hf.data.dataset import (
    FAMILIES,
    LABEL_TEXT_MODES,
    QUERY_TEXT_MODES,
    XMCDataset,
    infer_family,
    text_table,
    wikipedia_text,
    wikipedia_text_array,
)
from dexml_hf.data.formats import (
    read_bow,
    read_csv,
    read_lf,
    read_pecos,
    read_sparse,
    read_wiki500k,
    write_bow,
    write_csv,
    write_lf,
    write_pecos,
    write_sparse,
    write_wiki500k,
)
from dexml_hf.data.hub_layout import load_hub_dataset, push_to_hub, save_to_folder
from dexml_hf.data.loading import load_xmc_dataset, read_xmc, resolve_format
from dexml_hf.data.registry import FORMATS, FormatSpec, available_formats, detect_format, get_format, register_format

__all__ = [
    "FAMILIES",
    "FORMATS",
    "LABEL_TEXT_MODES",
    "QUERY_TEXT_MODES",
    "FormatSpec",
    "XMCDataset",
    "available_formats",
    "convert_dataset",
    "detect_format",
    "get_format",
    "infer_family",
    "load_hub_dataset",
    "load_xmc_dataset",
    "push_to_hub",
    "read_bow",
    "read_csv",
    "read_lf",
    "read_pecos",
    "read_sparse",
    "read_wiki500k",
    "read_xmc",
    "register_format",
    "resolve_format",
    "save_to_folder",
    "text_table",
    "wikipedia_text",
    "wikipedia_text_array",
    "write_bow",
    "write_csv",
    "write_lf",
    "write_pecos",
    "write_sparse",
    "write_wiki500k",
]
