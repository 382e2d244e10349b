"""What the network's output means (`train.loss`): five grade logits, or one continuous grade.

    ce          fc -> 5 logits. outputs: softmax probabilities (N, 5); grade: argmax;
                referable AUC from P(grade >= 2) = p2 + p3 + p4
    regression  fc -> 1 value, the grade as a number. outputs: that score (N, 1); grade: the
                score cut at four thresholds (rounding while training, fitted on validation for
                QWK: retino.training.thresholds); referable AUC from the score (it ranks)

"outputs" are what everything after the network works on: flip TTA and the paired-eye blend
average them, the same way for both heads.
"""

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from retino.grades import NUM_CLASSES
from retino.metrics import classification_metrics, grading_metrics, quick_metrics
from retino.training import thresholds as cuts


@dataclass(frozen=True)
class Head:
    kind: str  # "ce" | "regression", as train.loss

    @property
    def regression(self) -> bool:
        return self.kind == "regression"

    @property
    def outputs(self) -> int:
        """Width of the network's last layer."""
        return 1 if self.regression else NUM_CLASSES

    @property
    def columns(self) -> list[str]:
        """Names of the output columns in prediction tables."""
        return ["score"] if self.regression else [f"p{g}" for g in range(NUM_CLASSES)]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """The network's (B, K) output as outputs: probabilities, or the score as it is."""
        return logits.float() if self.regression else torch.softmax(logits.float(), 1)

    def batch_grades(self, logits: torch.Tensor) -> torch.Tensor:
        """Grades of a training batch: argmax, or the score rounded (thresholds are fitted on
        validation only, never on what the model is trained on)."""
        if not self.regression:
            return logits.argmax(1)
        bounds = _rounding_bounds(logits.device)
        return torch.bucketize(logits[:, 0].float().contiguous(), bounds, right=True)

    def grades(self, outputs: np.ndarray, thresholds: list[float] | None = None) -> np.ndarray:
        """Grades of (N, K) outputs; a regression score is cut at `thresholds` (None: rounding)."""
        if not self.regression:
            return outputs.argmax(1)
        return cuts.cut(outputs[:, 0], cuts.DEFAULT if thresholds is None else thresholds)

    def fit(self, outputs: np.ndarray, labels: np.ndarray) -> list[float] | None:
        """Thresholds fitted for QWK on these (validation) outputs; None for ce (argmax)."""
        return cuts.fit_thresholds(outputs[:, 0], labels) if self.regression else None

    def expected_grade(self, outputs: np.ndarray) -> np.ndarray:
        """(N,) the grade as a number: the score, or sum g * p_g."""
        if self.regression:
            return outputs[:, 0]
        return outputs @ np.arange(NUM_CLASSES, dtype=outputs.dtype)

    def loss(self, outputs: np.ndarray, labels: np.ndarray) -> float:
        """The head's loss on outputs: mean negative log-likelihood of the probabilities, or
        mean squared error of the score."""
        y = torch.as_tensor(labels)
        if self.regression:
            return F.mse_loss(torch.as_tensor(outputs[:, 0]), y.float()).item()
        return F.nll_loss(torch.log(torch.as_tensor(outputs).clamp_min(1e-12)), y).item()

    def metrics(
        self, labels: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, float]:
        """loss, acc, qwk of a held-out split's outputs."""
        grades = self.grades(outputs, thresholds)
        return {"loss": self.loss(outputs, labels), **quick_metrics(labels, grades)}

    def report(self, labels: np.ndarray, outputs: np.ndarray, grades: np.ndarray) -> dict:
        """The evaluation's metrics (retino.metrics) of `grades` made from `outputs`; the
        referable AUC ranks by P(grade >= 2), or by the score."""
        if self.regression:
            return grading_metrics(labels, grades, outputs[:, 0])
        return classification_metrics(labels, outputs)  # argmax: `grades`

    def cam_targets(self, grades: np.ndarray) -> np.ndarray:
        """The output Grad-CAM follows per image: the grade's logit, or the one score (where
        the evidence for a higher grade lies)."""
        return np.zeros_like(grades) if self.regression else grades


CE = Head("ce")


@functools.cache
def _rounding_bounds(device: torch.device) -> torch.Tensor:
    """The rounding cut points on `device`, made once: a fresh host-to-GPU copy every step
    would make the host wait for the GPU."""
    return torch.tensor(cuts.DEFAULT, device=device)
