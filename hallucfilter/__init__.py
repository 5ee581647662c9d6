"""hallucfilter: flag hallucinated diffusion samples by the variance of the predicted clean sample.

Aithal et al., "Understanding Hallucinations in Diffusion Models through Mode
Interpolation", NeurIPS 2024.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
