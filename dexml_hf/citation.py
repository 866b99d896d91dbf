"""The DEXML paper's BibTeX, once: the losses' ``citation``, the model card and the ``evaluate`` metric use it."""

__all__ = ["DEXML_CITATION"]

DEXML_CITATION = """
@inproceedings{gupta2024dualencoders,
    title={Dual-Encoders for Extreme Multi-Label Classification},
    author={Nilesh Gupta and Devvrit Khatri and Ankit Singh Rawat and Srinadh Bhojanapalli and Prateek Jain and Inderjit S. Dhillon},
    booktitle={The Twelfth International Conference on Learning Representations},
    year={2024},
    url={https://openreview.net/forum?id=dNe1T0Ahby}
}
"""
