"""The floating-point dtypes a run can use, by config name (``executor.dtype``)."""
from __future__ import annotations

import torch

#: ``executor.dtype`` -> torch dtype of the data, the model and every client computation
DTYPES = {"float32": torch.float32, "float64": torch.float64}
