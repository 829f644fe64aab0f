"""A checkpoint of another network (class count, depth, head) is refused in one line that
says what the checkpoint holds and what the network is, not torch's list of every tensor."""

import numpy as np
import pytest
import torch
from PIL import Image

from em_tutorial.cli import main
from em_tutorial.nn import emanet_resnet50, emanet_resnet101, emanet_tiny
from em_tutorial.segmentation import TOUR_MODEL, TrainConfig, build_model, save_checkpoint
from em_tutorial.segmentation.checkpoint import load_model_state, training_state


def _refusal(model, weights) -> str:
    with pytest.raises(ValueError) as error:
        load_model_state(model, weights, "checkpoint c.pt")
    message = str(error.value)
    assert "\n" not in message and message.startswith("checkpoint c.pt does not fit this network")
    return message


def test_other_class_count_and_depth_are_named():
    message = _refusal(emanet_resnet50(11), emanet_resnet101(21).state_dict())
    assert message.endswith("this checkpoint has ResNet-101 (deep stem) / 21 classes, the model "
                            "has ResNet-50 (deep stem) / 11 classes")  # fmt: skip


def test_other_head_is_named_and_a_fitting_state_loads():
    message = _refusal(emanet_tiny(11, **TOUR_MODEL, head="none"),
                       emanet_tiny(11, **TOUR_MODEL).state_dict())  # fmt: skip
    assert message.endswith("this checkpoint has EMAU head, the model has no attention head")
    message = _refusal(emanet_tiny(11, **{**TOUR_MODEL, "num_bases": 8}),
                       emanet_tiny(11, **TOUR_MODEL).state_dict())  # fmt: skip
    assert message.endswith("this checkpoint has 16 bases, the model has 8 bases")
    # Same structure, an entry more: the differing entry is named instead.
    weights = {**emanet_tiny(11, **TOUR_MODEL).state_dict(), "extra.weight": torch.zeros(1)}
    message = _refusal(emanet_tiny(11, **TOUR_MODEL), weights)
    assert message.endswith("unexpected keys 1 ('extra.weight')")
    source, target = emanet_tiny(11, **TOUR_MODEL), emanet_tiny(11, **TOUR_MODEL)
    load_model_state(target, source.state_dict(), "checkpoint c.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                 target.state_dict().values()))  # fmt: skip


def _tiny_voc(root):
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(np.zeros((40, 40), np.uint8), mode="L").save(root / "SegmentationClass" / "a.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    return root


def test_eval_of_a_digit_checkpoint_on_voc_is_one_line(tmp_path, capsys):
    config = TrainConfig(dataset="digits", image_size=32, num_scenes=4, val_scenes=2,
                         out_dir=str(tmp_path / "run"))  # fmt: skip
    model = build_model(config, 11)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(training_state(0, model, optimizer, config), checkpoint)
    voc = _tiny_voc(tmp_path / "voc")
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", "voc", "--data-root",
                 str(voc), "--no-progress"]) == 1  # fmt: skip
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "state_dict" not in error
    assert error.startswith(f"em-tutorial: error: checkpoint {checkpoint} does not fit this "
                            "network: this checkpoint has 11 classes, the model has 21 "
                            "classes\n")  # fmt: skip
