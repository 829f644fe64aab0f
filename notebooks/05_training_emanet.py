# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Training EMANet
#
# Everything so far ran on fixed features. Here EMANet learns its own: a tiny version of the
# network trains for a short while on the package's embedded data set, is evaluated by mean
# IoU, shows what its bases attend to, and is compared with the same network without the EMA
# Unit. The run is deliberately short (about a minute on two CPU cores); the end of the
# notebook says how to run the full-length version and how to train on PASCAL VOC.

# %%
import inspect
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from em_tutorial.nn import EMANet
from em_tutorial.segmentation import TOUR_MODEL, TrainConfig, figures, train
from em_tutorial.segmentation.data import DigitScenes, SceneConfig

# %% [markdown]
# ## The data: digit scenes
#
# No download: scenes are composed at run time from scikit-learn's 8×8 handwritten digits,
# scaled up and painted in random colours onto textured, noisy backgrounds. Each ink pixel is
# labelled with its digit (classes 1–10 for digits 0–9), everything else is background
# (class 0). A short piece of stroke looks alike in a 1, a 4 and a 7; only the whole digit
# tells them apart, so the task needs context, which is what the attention module gathers.
# Validation scenes use digits written by other people than the training scenes.

# %%
# The digits recipe with a smaller budget: 64 x 64 scenes, 1000 batches of 8, and a larger
# learning rate than the recipe's 0.05 to make the most of few steps. One CPU thread: a tiny
# network gains little from more, and threads that wait for each other on a busy machine
# can make training many times slower.
budget = {"dataset": "digits", "image_size": 64, "iterations": 1000, "batch_size": 8,
          "lr": 0.1, "num_scenes": 1000, "val_scenes": 100, "seed": 0, "threads": 1,
          "progress": False}
settings = TrainConfig(**budget)  # the digits recipe, with this notebook's budget
val_set = DigitScenes("val", settings.val_scenes, settings.seed,
                      SceneConfig(image_size=settings.image_size))
print(f"{settings.num_scenes} training and {len(val_set)} validation scenes of "
      f"{settings.image_size} x {settings.image_size} pixels, {val_set.num_classes} classes")

fig, axes = plt.subplots(2, 6, figsize=(13, 4.4))
for i in range(6):
    image, label = val_set.raw(i)  # uint8 (S, S, 3), (S, S)
    axes[0, i].imshow(image)
    axes[1, i].imshow(figures.colorize(label), interpolation="nearest")
    digits = [val_set.class_names[c] for c in np.unique(label) if c != 0]
    axes[1, i].set_title("digits " + ", ".join(digits), fontsize=9)
for ax in axes.flat:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The network
#
# The same structure as the paper's EMANet, shrunk for a CPU: a dilated ResNet backbone with
# output stride 8, a $3\times3$ convolution, the EMAU, another $3\times3$ convolution, dropout,
# a $1\times1$ classifier and bilinear upsampling back to the image size.

# %%
print(inspect.getsource(EMANet.forward))
print("tiny configuration:", TOUR_MODEL)

# %% [markdown]
# ## A short training run
#
# `em_tutorial.segmentation.train` runs the official recipe scaled down: SGD with momentum 0.9, a
# poly learning-rate schedule, weight decay on convolution weights only, cross-entropy that
# ignores label 255, then an evaluation on the validation scenes. Its settings come from a
# `TrainConfig`; here only the budget is cut (see `budget` above). The
# ablation is the identical configuration with `head="none"`: the EMAU replaced by nothing.

# %%
workdir = tempfile.TemporaryDirectory()  # checkpoints and logs; removed at the end
runs = {}
for name, head in (("EMANet", "emau"), ("without EMAU", "none")):
    config = TrainConfig(head=head, out_dir=str(Path(workdir.name) / head), **budget)
    runs[name] = train(config)
    run = runs[name]
    print(f"{name:13s} trained {config.iterations} iterations in {run['train_seconds']:5.1f} s, "
          f"final loss {run['final_loss']:.3f}, validation mIoU {run['metrics']['miou']:.3f}")

# %% [markdown]
# ## Validation mIoU
#
# For each class $c$, IoU is the overlap between predicted and true pixels of $c$ divided by
# their union, $\frac{TP_c}{TP_c + FP_c + FN_c}$, from the confusion matrix accumulated over
# all validation pixels; mIoU is its mean over classes. Per class:

# %%
class_names = list(runs["EMANet"]["metrics"]["iou"])
positions = np.arange(len(class_names))
plt.figure(figsize=(9, 3))
for offset, (name, run) in zip((-0.2, 0.2), runs.items()):
    ious = [run["metrics"]["iou"][c] or 0.0 for c in class_names]
    plt.bar(positions + offset, ious, width=0.4,
            label=f"{name} (mIoU {run['metrics']['miou']:.3f})")
plt.xticks(positions, class_names)
plt.ylabel("IoU")
plt.ylim(0, 1)
plt.legend()
plt.show()

# %%
display(figures.training_curves_figure({name: run["log"] for name, run in runs.items()}))

# %% [markdown]
# With a budget this short the comparison says little: both networks are still improving,
# and another seed or learning rate moves each mIoU by several points, either way. Whether
# the attention pays off shows only in longer runs: `em-tutorial tour` trains both networks
# for longer on more and larger scenes and reports the two numbers side by side.
#
# ## What the bases attend to
#
# After a forward pass, `model.emau.last_z` holds the responsibilities $z$ of the last
# E-step, shape $(B, hw, K)$. Column $k$ reshaped to the $h \times w$ feature map is the
# attention map of basis $\mu_k$: the pixels that basis explains. These are the maps the
# EMANet paper draws. The bases specialise: some pick out the digits, some the background,
# and some stay almost unused.

# %%
model = runs["EMANet"]["model"]
image, label = val_set[0]  # normalised (3, S, S) float32, (S, S) int64
display(figures.attention_figure(model, image, label, class_names=val_set.class_names))

# %% [markdown]
# Predictions of both networks on a few validation scenes:

# %%
display(figures.predictions_figure({name: run["model"] for name, run in runs.items()},
                                     val_set, indices=[1, 2, 3]))

# %%
workdir.cleanup()

# %% [markdown]
# ## The full-length run, and PASCAL VOC
#
# The command-line tool runs the same code. On any machine, the whole story (equivalence
# check, both trainings at full length, evaluation, figures and a report) in about four
# minutes on an idle two-core CPU:
#
# ```bash
# em-tutorial tour --out em_tutorial_out
# ```
#
# On PASCAL VOC 2012 (download it yourself; the folder holds `JPEGImages/`,
# `SegmentationClass/` and `ImageSets/Segmentation/`, optionally with the SBD `trainaug`
# list), the official recipe (ResNet-101, output stride 8, 30k iterations, batch 16, crop
# 513, SGD lr 9e-3) is the default for `--dataset voc`; use several GPUs with `torchrun`:
#
# ```bash
# torchrun --nproc_per_node 4 -m em_tutorial.cli train --dataset voc \
#     --data-root /data/VOCdevkit/VOC2012 --out runs/voc
# em-tutorial eval --checkpoint runs/voc/checkpoint.pt --multi-scale --flip
# ```
#
# `--pretrained-backbone FILE` starts from backbone weights (such as ImageNet ones) when you
# have them, `--resume` continues an interrupted run from its last checkpoint, and
# `em-tutorial train --help` lists every option. The paper reports 80.05 mIoU on VOC 2012 val
# single-scale with ResNet-101, 81.32 with multi-scale and flip.
