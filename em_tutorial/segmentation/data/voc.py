"""PASCAL VOC 2012 segmentation, read from a local folder in its standard layout.

::

    root/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png          palette PNG, pixel value = class index, 255 = ignore
      SegmentationClassAug/<id>.png       optional: SBD "trainaug" labels (index PNGs)
      ImageSets/Segmentation/train.txt    one image id per line (also val.txt, trainval.txt,
                                          and trainaug.txt when the SBD set is added)

``root`` may be ``VOC2012`` itself or a folder holding ``VOCdevkit/VOC2012``. Nothing is
downloaded. Every file of a split is checked at construction, so missing files stop the run
before training starts, with their paths in the message; an unreadable (corrupt) file, or a
label holding values other than 0..20 and 255, does the same when it is first read.
:meth:`VOCSegmentation.check_labels` reads every label of a split at once (training and
evaluation do so for the split they evaluate, so a bad label there cannot wait until after
training); ``em-tutorial check-data`` reads whole splits, images included, in advance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .labels import LabelError, check_label, find_bad_samples
from .transforms import IGNORE_INDEX, to_model_input

__all__ = ["VOC_CLASS_NAMES", "VOCSegmentation", "default_train_split", "find_voc_root"]

VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

_AUGMENTED_SPLITS = ("trainaug", "train_aug")


def find_voc_root(root) -> Path:
    """The folder that holds ``JPEGImages``: ``root``, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"VOC data root does not exist: {root}")
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no PASCAL VOC layout under {root}: expected {root / 'JPEGImages'} (or the same under "
        f"VOC2012/ or VOCdevkit/VOC2012/) beside SegmentationClass/ and ImageSets/Segmentation/"
    )


def default_train_split(root) -> str:
    """``"trainaug"`` when the VOC folder ``root`` has that list (SBD added), else ``"train"``."""
    lists = find_voc_root(root) / "ImageSets" / "Segmentation"
    return "trainaug" if (lists / "trainaug.txt").is_file() else "train"


def _open_image(path: Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here and not deep in a worker
    except FileNotFoundError:
        raise FileNotFoundError(f"missing {what} file: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise OSError(f"cannot read {what} file {path} (corrupt or not an image): {error}") from error
    return image


def _size_mismatch(image_path, width, height, label_path, label_shape) -> str:
    return (f"image {image_path} is {width}x{height} but label {label_path} is "
            f"{label_shape[1]}x{label_shape[0]}")  # fmt: skip


class VOCSegmentation:
    """PASCAL VOC 2012 semantic segmentation (21 classes, ignore label 255).

    Parameters
    ----------
    root : path
        The VOC folder (see :func:`find_voc_root`).
    split : str
        A list in ``ImageSets/Segmentation`` -- ``"train"``, ``"val"``, ``"trainval"``, or
        ``"trainaug"`` (SBD augmented set, labels from ``SegmentationClassAug`` where present).
    transform : callable, optional
        ``transform(image (H,W,3) uint8, label (H,W) uint8, rng) -> (image, label)``. Default
        :func:`~em_tutorial.segmentation.data.transforms.to_model_input`; for training use
        :class:`~em_tutorial.segmentation.data.transforms.TrainAugmentation`.
    missing_ok : bool
        False (default): refuse at construction a split with missing files, naming them.
        True: accept it, and let :meth:`sample_problems` report each missing file beside the
        unreadable ones (``em-tutorial check-data``).

    Notes
    -----
    ``dataset[i]`` or ``dataset[(i, seed)]``: with a seed, the transform's random choices come
    from ``numpy.random.default_rng(seed)`` (the training sampler passes one per sample).
    """

    num_classes = len(VOC_CLASS_NAMES)
    class_names = VOC_CLASS_NAMES
    ignore_index = IGNORE_INDEX

    def __init__(self, root, split="train", transform=None, missing_ok=False):
        self.root = find_voc_root(root)
        self.split = split
        self.transform = transform or to_model_input
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            available = sorted(p.stem for p in list_file.parent.glob("*.txt"))
            raise FileNotFoundError(
                f"missing split list {list_file} (lists found: {available or 'none'})"
            )
        self.ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"split list {list_file} names no images")
        label_dirs = [self.root / "SegmentationClass"]
        if split in _AUGMENTED_SPLITS:
            label_dirs.insert(0, self.root / "SegmentationClassAug")
        self.image_paths, self.label_paths, missing = [], [], []
        for image_id in self.ids:
            image_path = self.root / "JPEGImages" / f"{image_id}.jpg"
            label_path = next(
                (d / f"{image_id}.png" for d in label_dirs if (d / f"{image_id}.png").is_file()),
                label_dirs[-1] / f"{image_id}.png",
            )
            for path, what in ((image_path, "image"), (label_path, "label")):
                if not path.is_file():
                    missing.append(f"missing {what} file: {path}")
            self.image_paths.append(image_path)
            self.label_paths.append(label_path)
        if missing and not missing_ok:
            more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise FileNotFoundError(f"{'; '.join(missing[:5])}{more} (listed in {list_file})")

    def __len__(self):
        return len(self.ids)

    def label(self, index):
        """Label ``(H, W)`` uint8 of sample ``index``: class indices and 255 (ignore), checked."""
        label_path = self.label_paths[index]
        label_image = _open_image(label_path, "label")
        if label_image.mode not in ("P", "L"):
            raise ValueError(
                f"label file {label_path} has mode {label_image.mode!r}; expected a palette ('P') "
                "or greyscale ('L') PNG whose pixel values are class indices"
            )
        label = np.asarray(label_image)
        return check_label(label, self.num_classes, self.ignore_index, f"file {label_path}")

    def check_labels(self, progress: bool = False) -> None:
        """Read every label of the split now, not when first drawn; one error naming the bad ones.

        Labels only (fast): ``em-tutorial check-data`` reads the images too.
        """
        problems = find_bad_samples(self, progress, f"labels {self.split}", read=self.label)
        if problems:
            more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise LabelError(f"{len(problems)} bad label file(s) in the VOC {self.split!r} split: "
                             f"{'; '.join(problems[:3])}{more}")  # fmt: skip

    def sample_problems(self, index) -> list[str]:
        """Every problem of sample ``index``, one message per file: missing or unreadable image,
        missing, unreadable or out-of-range label, sizes that differ. Empty when it reads."""
        problems, image = [], None
        try:
            image = _open_image(self.image_paths[index], "image")
        except OSError as error:
            problems.append(str(error))
        try:
            label = self.label(index)
        except (OSError, ValueError) as error:
            return problems + [str(error)]
        if image is not None and label.shape != (image.height, image.width):
            problems.append(_size_mismatch(self.image_paths[index], image.width, image.height,
                                           self.label_paths[index], label.shape))  # fmt: skip
        return problems

    def raw(self, index):
        """Image ``(H, W, 3)`` uint8 and label ``(H, W)`` uint8 (class indices, 255 ignore)."""
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image = np.asarray(_open_image(image_path, "image").convert("RGB"))
        label = self.label(index)
        if label.shape != image.shape[:2]:
            raise ValueError(_size_mismatch(image_path, image.shape[1], image.shape[0],
                                            label_path, label.shape))  # fmt: skip
        return image, label

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = np.random.default_rng(seed) if seed is not None else None
        return self.transform(*self.raw(index), rng=rng)
