import numpy as np

from model.labels import PART_LABEL
from pipelines.label_maps import FLIP_LUT, compose_label_map, flip_label_map
from pipelines.parsing_data import HorizontalFlipSwapLR


def test_later_parts_overwrite_earlier_ones():
    skin = np.ones((4, 4), bool)
    nose = np.zeros((4, 4), bool)
    nose[1:3, 1:3] = True
    hair = np.zeros((4, 4), bool)
    hair[0:2, :] = True  # overlaps skin and the nose's top row
    label = compose_label_map({"hair": hair, "nose": nose, "skin": skin})  # dict order must not matter
    assert label[3, 0] == PART_LABEL["skin"]
    assert label[2, 1] == PART_LABEL["nose"]
    assert label[1, 1] == PART_LABEL["hair"]  # hair (13) is painted after the nose (2)
    assert label[0, 3] == PART_LABEL["hair"]
    assert compose_label_map({}, (2, 2)).sum() == 0


def test_flip_swaps_left_and_right_classes():
    label = np.zeros((3, 4), np.uint8)
    label[1, 0] = PART_LABEL["l_eye"]
    label[1, 3] = PART_LABEL["r_brow"]
    label[2, 0] = PART_LABEL["nose"]
    flipped = flip_label_map(label)
    assert flipped[1, 3] == PART_LABEL["r_eye"] and flipped[1, 0] == PART_LABEL["l_brow"]
    assert flipped[2, 3] == PART_LABEL["nose"]
    assert (flip_label_map(flipped) == label).all()
    assert (FLIP_LUT[FLIP_LUT] == np.arange(19)).all()


def test_albumentations_flip_moves_image_and_swaps_mask():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = 255
    mask = np.zeros((2, 3), np.uint8)
    mask[0, 0] = PART_LABEL["l_ear"]
    out = HorizontalFlipSwapLR(p=1.0)(image=image, mask=mask)
    assert out["image"][0, 2].tolist() == [255, 255, 255] and out["image"][0, 0].sum() == 0
    assert out["mask"][0, 2] == PART_LABEL["r_ear"] and out["mask"][0, 0] == 0
