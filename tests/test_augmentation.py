"""Mirror and shift of training faces: a parsing map moves with its face and mirrors its left / right classes."""

import torch

from model.labels import PART_LABEL
from pipelines.training.augmentation import mirror_and_shift


def _marked(side: int, row: int, col: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark face with one bright pixel, and a map whose left eye is that pixel (the rest skin)."""
    image = torch.zeros(1, 3, side, side)
    image[0, :, row, col] = 1.0
    seg = torch.full((1, side, side), PART_LABEL["skin"], dtype=torch.long)
    seg[0, row, col] = PART_LABEL["l_eye"]
    return image, seg


def test_the_map_moves_with_its_face_and_a_mirrored_left_eye_becomes_the_right():
    seen = set()
    for seed in range(12):
        image, seg = _marked(16, 7, 5)
        gen = torch.Generator().manual_seed(seed)
        out, maps = mirror_and_shift(image, gen, shift=2, maps=seg)
        assert out.shape == image.shape and maps.shape == seg.shape and maps.dtype == torch.long
        bright = (out[0, 0] == 1.0).nonzero().tolist()
        eye = (maps[0] != PART_LABEL["skin"]).nonzero().tolist()
        assert bright == eye and len(eye) == 1  # the same pixel, shifted by the same amount
        (r, c), = eye
        flipped = c >= 8  # column 5 lands at 10 - shift .. 10 + shift when mirrored, 3 .. 7 when not
        assert int(maps[0, r, c]) == PART_LABEL["r_eye" if flipped else "l_eye"]
        assert abs(r - 7) <= 2
        seen.add(flipped)
    assert seen == {True, False}  # both cases drawn


def test_without_maps_the_faces_alone_are_returned_as_the_specialist_uses_them():
    image, _ = _marked(16, 7, 5)
    a = mirror_and_shift(image, torch.Generator().manual_seed(3), shift=2)
    b, _ = mirror_and_shift(image, torch.Generator().manual_seed(3), shift=2, maps=torch.zeros(1, 16, 16).long())
    assert torch.equal(a, b)  # the same draws with or without maps
