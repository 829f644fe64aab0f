"""The segmentation application: training and evaluating EMANet, a user of the PyTorch stage.

The stages (``gmm``, ``ema``, ``gpu``, ``nn``) teach the maths; this subpackage puts
:func:`em_tutorial.nn.emanet_tiny` and its ResNet siblings to work on the embedded digit scenes
and on PASCAL VOC 2012. One module per idea:

* :mod:`.data` -- the data sets (digit scenes, VOC), the official augmentation, the resumable
  distributed sampler.
* :mod:`.config` -- :class:`TrainConfig`, the per-data-set :data:`RECIPES`, and the model and
  data sets a config describes.
* :mod:`.training` -- the training loop (:func:`train`): poly schedule, SGD, log, checkpoints.
* :mod:`.loss` -- the cross-entropy averaged over all pixels (official) or the labelled ones.
* :mod:`.checkpoint` -- atomic save, safe load, the checks before resuming.
* :mod:`.distributed` -- ``torchrun`` set-up, device choice, BatchNorm averaging, replica check.
* :mod:`.runlog` -- ``log.jsonl``, one JSON record per line.
* :mod:`.metrics` -- confusion matrix, per-class IoU, mean IoU (NumPy).
* :mod:`.evaluation` -- single- and multi-scale inference with flips.
* :mod:`.figures` -- attention maps of the bases, predictions, training curves.

The ``em-tutorial`` command (:mod:`em_tutorial.cli`) and the tour (:mod:`em_tutorial.tour`)
are the entry points. Needs the ``torch`` extra.
"""

from .checkpoint import CorruptCheckpoint, load_checkpoint, save_checkpoint
from .config import CONTEXT_MODEL, RECIPES, TOUR_MODEL, TrainConfig, build_datasets, build_model, build_val_set
from .distributed import resolve_device
from .evaluation import VOC_EVAL_SCALES, evaluate, predict_probabilities
from .metrics import ConfusionMatrix
from .training import TrainingDiverged, poly_factor, train

__all__ = [
    "CONTEXT_MODEL",
    "RECIPES",
    "TOUR_MODEL",
    "VOC_EVAL_SCALES",
    "ConfusionMatrix",
    "CorruptCheckpoint",
    "TrainConfig",
    "TrainingDiverged",
    "build_datasets",
    "build_model",
    "build_val_set",
    "evaluate",
    "load_checkpoint",
    "poly_factor",
    "predict_probabilities",
    "resolve_device",
    "save_checkpoint",
    "train",
]
