"""Readers and writers for the Extreme Classification Repository formats (DESIGN.md §2), one module per format.

=============  ======================================================================  =============
format         files                                                                   texts
=============  ======================================================================  =============
``lf``         ``trn/tst[/val].json.gz`` (uid, title, content, target_ind, target_rel),  queries+labels
               ``lbl.json.gz`` (uid, title, content), ``filter_labels_{train,test}.txt``
``wiki500k``   ``trn.raw.json.gz``, ``tst.raw.json.gz`` (as LF), ``Yf.txt`` (``uid->name``)  queries+labels
``pecos``      ``raw/trn_X.txt``, ``raw/tst_X.txt``, ``raw/Y.txt`` (a text a line),       queries+labels
               ``Y.trn.npz``, ``Y.tst.npz`` (scipy CSR, points x labels)
``sparse``     ``trn_X_Y.txt``, ``tst_X_Y.txt``: header ``N L``, a line per point            none
               ``idx:val idx:val``
``bow``        ``train.txt``, ``test.txt``: header ``N D L``, lines ``l1,l2 f:v f:v``        none
               (features are read only to validate them; labels are kept)
``csv``        one ``.csv`` with ``title,content,tags`` (comma-separated tags), optional   queries+labels
               ``uid`` and ``split`` columns; otherwise a seeded train/test split
=============  ======================================================================  =============

Every format (these, ``hub`` in ``hub_layout.py``, ``movielens``, ``synthetic``) is registered in
:mod:`dexml_hf.data.registry`; read any of them with :func:`dexml_hf.data.load_xmc_dataset`.

Labels-only formats (``sparse``, ``bow``) have no texts: queries get empty titles and each label's
``uid`` and ``title`` are its id as a string (``"17"``) — a placeholder, not a name a dual encoder
can learn from; put real names in ``Yf.txt`` next to the files and they are used instead.
Optional ``val`` files become the ``validation`` split. Bad input raises :class:`~dexml_hf.errors.DataError`
naming the file, the line and the field. Writers go through a marked temp folder renamed at the end, so a
failure leaves nothing half-written.
"""

from __future__ import annotations

from dexml_hf.data.formats.bow import read_bow, write_bow
from dexml_hf.data.formats.csv import read_csv, write_csv
from dexml_hf.data.formats.lf import read_lf, write_lf
from dexml_hf.data.formats.pecos import read_pecos, write_pecos
from dexml_hf.data.formats.sparse import read_sparse, write_sparse
from dexml_hf.data.formats.wiki500k import read_wiki500k, write_wiki500k
from dexml_hf.data.loading import read_xmc
from dexml_hf.data.registry import FORMATS, detect_format

__all__ = [
    "FORMATS",
    "detect_format",
    "read_bow",
    "read_csv",
    "read_lf",
    "read_pecos",
    "read_sparse",
    "read_wiki500k",
    "read_xmc",
    "write_bow",
    "write_csv",
    "write_lf",
    "write_pecos",
    "write_sparse",
    "write_wiki500k",
]
