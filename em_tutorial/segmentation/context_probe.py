"""Direct evidence of long-range context: do a network's fragment predictions follow the far digits?

On the validation context scenes of a run (same seed, same scenes), three versions of every
scene (:class:`~em_tutorial.segmentation.data.ContextScenes` ``far_digits``):

* ``keep``: as trained;
* ``swap``: the full instances drawn as another class, the fragments untouched;
* ``remove``: the full instances left out, the background texture showing where they were.

Measured on the fragments' ink pixels (the pixels whose class only the far digits decide):

    follows_swap        share predicted as the far digits' new class after the swap and not
                        before: how often the network carries the far class over
    unchanged_by_swap   share whose prediction the swap leaves as it was
    fragment_accuracy   share predicted right (keep), and ``fragment_accuracy_removed`` with the
                        far digits removed

A network whose only path from the far digits to a fragment is its convolutions cannot follow:
the far digits lie beyond their receptive field, so its fragment logits are the same in all
three versions (up to float rounding), ``follows_swap`` is 0 and ``unchanged_by_swap`` is 1.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["far_digit_probe"]


@torch.no_grad()
def _predict(model, scenes, batch_size: int) -> np.ndarray:
    """Arg-max class of every pixel, (num_scenes, S, S) uint8."""
    predictions = []
    for start in range(0, len(scenes), batch_size):
        images = torch.stack([torch.as_tensor(scenes[i][0])
                              for i in range(start, min(start + batch_size, len(scenes)))])
        predictions.append(model(images).argmax(dim=1).to(torch.uint8).numpy())  # (B, S, S)
    return np.concatenate(predictions)


def far_digit_probe(model, config, num_scenes: int | None = None, batch_size: int = 16) -> dict:
    """The swap and removal tests of ``model`` on the validation scenes of ``config``.

    Parameters
    ----------
    model : EMANet
        A network trained on the context task; put in eval mode here.
    config : TrainConfig
        A context run's config (``dataset="context"``): its seed, scene size and
        normalisation give the scenes.
    num_scenes : int, optional
        Scenes to probe (default: the run's ``val_scenes``).
    batch_size : int

    Returns
    -------
    dict
        ``follows_swap``, ``unchanged_by_swap``, ``fragment_accuracy``,
        ``fragment_accuracy_removed`` (shares of fragment ink pixels, see the module docstring)
        and ``pixels`` (how many fragment ink pixels were counted).
    """
    from .config import build_val_set

    if config.dataset != "context":
        raise ValueError(f"the far-digit probe needs a context run, got dataset {config.dataset!r}")
    model.eval()
    sets = {mode: build_val_set(config, far_digits=mode, num_scenes=num_scenes)
            for mode in ("keep", "swap", "remove")}  # fmt: skip
    predicted = {mode: _predict(model, scenes, batch_size) for mode, scenes in sets.items()}
    kept, swapped = sets["keep"], sets["swap"]
    fragment_ink = kept.windows & (kept.labels > 0)  # (num_scenes, S, S)
    scene_class = np.broadcast_to((kept.scene_classes + 1)[:, None, None], fragment_ink.shape)
    far_class = np.broadcast_to((swapped.far_classes + 1)[:, None, None], fragment_ink.shape)
    truth, far = scene_class[fragment_ink], far_class[fragment_ink]
    keep, swap, remove = (predicted[m][fragment_ink] for m in ("keep", "swap", "remove"))
    return {
        "follows_swap": float(np.mean((swap == far) & (keep != far))),
        "unchanged_by_swap": float(np.mean(swap == keep)),
        "fragment_accuracy": float(np.mean(keep == truth)),
        "fragment_accuracy_removed": float(np.mean(remove == truth)),
        "pixels": int(fragment_ink.sum()),
    }
