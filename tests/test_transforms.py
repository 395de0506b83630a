"""Face crop, inverse mapping and augmentation (facemark.data.transforms)."""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch

from facemark.data.records import FaceRecord
from facemark.data.transforms import (
    AUGMENTATION_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentationConfig,
    AugmentationParams,
    ClippedNormal,
    CropBox,
    CropConvention,
    Uniform,
    apply_augmentation,
    crop_matrix,
    crop_to_image,
    crop_to_tensor,
    denormalise_landmarks,
    face_box,
    hrnet_crop_convention,
    image_to_tensor,
    invert_affine,
    landmark_box,
    normalise_crops,
    normalise_landmarks,
    prepare_sample,
    record_face_box,
    sample_augmentation,
    sdfl_augmentation,
    slpt_augmentation,
    slpt_crop_convention,
    square_box,
    transform_points,
    warp_image,
)
from facemark.layouts import WFLW98, Layout

SIZE = 96

# A three-point layout: points 0 and 1 swap under a flip, point 2 maps to itself. Each point is
# drawn in its own colour channel, so a blob's channel says which ORIGINAL point it is.
TRIANGLE = Layout.from_dict(
    {
        "name": "triangle3",
        "num_points": 3,
        "flip_permutation": [1, 0, 2],
        "inter_ocular": [0, 1],
        "inter_pupil": [0, 1],
        "groups": {"eyes": [0, 1], "nose": [2]},
    }
)
# Deliberately not mirror-symmetric, so a missing permutation puts a point on the wrong blob.
TRIANGLE_POINTS = np.array([[62.3, 71.6], [95.8, 66.2], [81.4, 96.7]])


def blob_image(points: np.ndarray, shape=(160, 170), sigma: float = 1.6) -> np.ndarray:
    """Black image with a Gaussian blob at point i in colour channel i."""
    image = np.zeros(shape + (3,), np.float64)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    for channel, (x, y) in enumerate(points):
        image[:, :, channel] += 255 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def channel_centroid(image: np.ndarray, channel: int) -> np.ndarray:
    weights = image[:, :, channel].astype(np.float64)
    assert weights.sum() > 100, f"blob in channel {channel} vanished"
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


def triangle_box() -> CropBox:
    # Wider than the triangle, so that every blob stays whole inside the crop under augmentation.
    return CropBox(79.0, 81.0, 90.0)


# ------------------------------------------------------------------------------------------------
# Crop conventions and boxes
# ------------------------------------------------------------------------------------------------
def test_slpt_box_is_tight_landmark_box_times_1_2():
    points = np.array([[10.0, 20.0], [50.0, 30.0], [30.0, 80.0]])
    assert landmark_box(points) == (10.0, 20.0, 50.0, 80.0)
    box = face_box(slpt_crop_convention(), landmarks=points)
    assert (box.centre_x, box.centre_y) == (30.0, 50.0)
    assert box.side == pytest.approx(1.2 * 60.0)
    assert box.corners() == pytest.approx((30 - 36, 50 - 36, 30 + 36, 50 + 36))


def test_dataset_and_detector_boxes_use_their_own_factor():
    dataset = face_box(hrnet_crop_convention(), dataset_box=(0, 0, 100, 40), landmarks=np.zeros((3, 2)))
    assert (dataset.centre_x, dataset.centre_y, dataset.side) == pytest.approx((50, 20, 125))
    detector = face_box(CropConvention("detector", 1.15), detector_box=(10, 10, 30, 50))
    assert (detector.centre_x, detector.centre_y, detector.side) == pytest.approx((20, 30, 46))


def test_missing_box_source_is_a_clear_error():
    record = FaceRecord(identifier="300w/common/7", landmarks=TRIANGLE_POINTS, layout=TRIANGLE, box=None)
    with pytest.raises(ValueError, match=r"300w/common/7.*dataset.*has none"):
        record_face_box(record, hrnet_crop_convention("dataset"))
    with pytest.raises(ValueError, match="detector box"):
        record_face_box(record, CropConvention("detector", 1.15))
    box = record_face_box(record, slpt_crop_convention())
    assert box.side == pytest.approx(1.2 * (95.8 - 62.3))


def test_bad_boxes_and_conventions_are_errors():
    with pytest.raises(ValueError, match="box_source"):
        CropConvention("face", 1.2)
    with pytest.raises(ValueError, match="enlarge"):
        CropConvention("landmarks", 0)
    with pytest.raises(ValueError, match="size"):
        CropConvention("landmarks", 1.2, size=1)
    with pytest.raises(ValueError, match="empty or inverted"):
        square_box((10, 10, 5, 20), 1.2)
    with pytest.raises(ValueError, match="empty or inverted"):
        face_box(slpt_crop_convention(), landmarks=np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"landmarks \[1\] are NaN"):
        face_box(slpt_crop_convention(), landmarks=np.array([[0, 0], [np.nan, 1], [3, 4.0]]))


def test_crop_convention_round_trips_and_rejects_unknown_keys():
    convention = CropConvention("dataset", 1.25, 128)
    assert CropConvention.from_dict(convention.to_dict()) == convention
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['scale'\]"):
        CropConvention.from_dict({**convention.to_dict(), "scale": 2}, source="ckpt.pt")


# ------------------------------------------------------------------------------------------------
# The affine and its inverse
# ------------------------------------------------------------------------------------------------
def test_crop_matrix_maps_centre_to_half_size_and_box_edges_to_crop_edges():
    box = CropBox(100.0, 80.0, 50.0)
    matrix = crop_matrix(box, 256)
    corners = np.array([[100.0, 80.0], [75.0, 55.0], [125.0, 105.0]])
    np.testing.assert_allclose(transform_points(corners, matrix), [[128, 128], [0, 0], [256, 256]], atol=1e-12)
    mirrored = crop_matrix(box, 256, mirror=True)
    np.testing.assert_allclose(transform_points(corners, mirrored), [[127, 128], [255, 0], [-1, 256]], atol=1e-12)


def test_rotation_direction_matches_the_slpt_release():
    # The SLPT release maps centre + (h sin a, -h cos a) (h = half the side) to the top centre of
    # the crop: positive angles turn the content counter-clockwise as displayed.
    box, angle = CropBox(40.0, 60.0, 30.0), 25.0
    a = math.radians(angle)
    source = np.array([[40 + 15 * math.sin(a), 60 - 15 * math.cos(a)]])
    np.testing.assert_allclose(transform_points(source, crop_matrix(box, 64, rotation=angle)), [[32, 0]], atol=1e-12)
    # ... which is also OpenCV's getRotationMatrix2D convention.
    opencv = cv2.getRotationMatrix2D((40.0, 60.0), angle, 64 / 30.0)
    opencv[:, 2] += np.array([32 - 40, 32 - 60])
    np.testing.assert_allclose(crop_matrix(box, 64, rotation=angle), opencv, atol=1e-12)


def test_crop_then_inverse_returns_landmarks_within_1e4_px():
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = CropBox(*rng.uniform(-500, 3000, 2), side=rng.uniform(5, 3000))
        matrix = crop_matrix(box, int(rng.integers(16, 512)), rotation=rng.uniform(-180, 180), mirror=bool(rng.random() < 0.5))
        points = rng.uniform(-1000, 4000, (98, 2))
        back = crop_to_image(transform_points(points, matrix), matrix)
        assert np.abs(back - points).max() < 1e-4
        np.testing.assert_allclose(invert_affine(matrix), cv2.invertAffineTransform(matrix), atol=1e-9)


def test_batched_points_and_matrices_broadcast():
    rng = np.random.default_rng(1)
    matrices = np.stack([crop_matrix(CropBox(10 * i, 5 * i, 40 + i), 64, rotation=7 * i) for i in range(4)])
    points = rng.uniform(0, 100, (4, 5, 2))
    batched = crop_to_image(points, matrices)
    for i in range(4):
        np.testing.assert_allclose(batched[i], crop_to_image(points[i], matrices[i]), atol=1e-12)


def test_flip_twice_is_the_identity_for_image_and_landmarks():
    image = np.random.default_rng(2).integers(0, 256, (120, 140, 3), dtype=np.uint8)
    box = triangle_box()
    plain = apply_augmentation(image, TRIANGLE_POINTS, TRIANGLE, box, None, SIZE)
    flipped = apply_augmentation(image, TRIANGLE_POINTS, TRIANGLE, box, AugmentationParams(flip=True), SIZE)
    # The crop box covering the whole crop gives the identity matrix; flipping that flips back.
    whole_crop = CropBox(SIZE / 2, SIZE / 2, SIZE)
    np.testing.assert_array_equal(crop_matrix(whole_crop, SIZE), [[1, 0, 0], [0, 1, 0]])
    twice = apply_augmentation(flipped.image, flipped.landmarks, TRIANGLE, whole_crop, AugmentationParams(flip=True), SIZE)
    np.testing.assert_array_equal(twice.image, plain.image)
    np.testing.assert_allclose(twice.landmarks, plain.landmarks, atol=1e-12)
    # WFLW's 98-point permutation with an odd and an even width.
    points = np.random.default_rng(3).uniform(0, 200, (98, 2))
    for width in (199, 200):
        np.testing.assert_allclose(WFLW98.flip_landmarks(WFLW98.flip_landmarks(points, width), width), points)


def test_mirror_in_the_single_warp_equals_flipping_the_crop():
    noise = np.random.default_rng(4).integers(0, 256, (120, 140, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(noise, (0, 0), 2.0)  # smooth, so sub-pixel rounding costs <= 1 level
    box = CropBox(70.3, 55.9, 83.0)
    plain = warp_image(image, crop_matrix(box, SIZE, rotation=12.0), SIZE)
    mirrored = warp_image(image, crop_matrix(box, SIZE, rotation=12.0, mirror=True), SIZE)
    # Same sample points; OpenCV rounds sub-pixel positions to 1/32 px, which can differ between
    # x and its mirror, so allow one grey level on a smooth image.
    difference = np.abs(mirrored.astype(int) - plain[:, ::-1].astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_eval_path_only_crops():
    image = blob_image(TRIANGLE_POINTS)
    box = triangle_box()
    sample = prepare_sample(image, TRIANGLE_POINTS, TRIANGLE, box, SIZE)
    matrix = crop_matrix(box, SIZE)
    np.testing.assert_array_equal(sample.image, warp_image(image, matrix, SIZE))
    np.testing.assert_allclose(sample.matrix, matrix)
    np.testing.assert_allclose(sample.landmarks, transform_points(TRIANGLE_POINTS, matrix))
    assert not sample.flipped and sample.params is None
    np.testing.assert_array_equal(sample.point_order, [0, 1, 2])
    for channel in range(3):
        assert np.abs(channel_centroid(sample.image, channel) - sample.landmarks[channel]).max() < 0.15


def test_landmarks_outside_the_crop_are_kept():
    points = np.array([[50.0, 50.0], [60.0, 55.0], [-400.0, 900.0]])
    box = CropBox(55.0, 52.0, 20.0)
    sample = prepare_sample(np.zeros((100, 100, 3), np.uint8), points, TRIANGLE, box, SIZE)
    assert sample.landmarks[2, 0] < -1000 and sample.landmarks[2, 1] > 1000
    np.testing.assert_allclose(sample.to_image(sample.landmarks), points, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Augmentation keeps image and landmarks consistent
# ------------------------------------------------------------------------------------------------
def geometric_only(config: AugmentationConfig, **changes) -> AugmentationConfig:
    """The preset without the appearance changes that hide blobs (occlusion, grayscale)."""
    return dataclasses.replace(config, occlusion_probability=0.0, grayscale_probability=0.0, **changes)


@pytest.mark.parametrize(
    "config",
    [
        geometric_only(slpt_augmentation()),
        geometric_only(sdfl_augmentation()),
        geometric_only(sdfl_augmentation(), gaussian_blur_probability=0.5, gaussian_blur_sigma=Uniform(0.5, 2.0),
                       motion_blur_probability=0.5, motion_blur_length=5),
    ],
    ids=["slpt", "sdfl", "sdfl+blur"],
)
def test_augmented_landmarks_land_on_their_drawn_blobs(config):
    image = blob_image(TRIANGLE_POINTS)
    box = triangle_box()
    flips = 0
    for seed in range(40):
        sample = prepare_sample(image, TRIANGLE_POINTS, TRIANGLE, box, SIZE, config, np.random.default_rng(seed))
        flips += sample.flipped
        # Crop point i is original point perm[i] when flipped: it must sit on THAT point's colour.
        order = TRIANGLE.flip_permutation if sample.flipped else (0, 1, 2)
        for index in range(3):
            centroid = channel_centroid(sample.image, channel=order[index])
            error = np.linalg.norm(centroid - sample.landmarks[index])
            assert error < 0.1, f"seed {seed}: point {index} is {error:.2f} px off its blob ({sample.params})"
            brightest = np.unravel_index(np.argmax(sample.image[:, :, order[index]]), (SIZE, SIZE))[::-1]
            assert np.abs(np.array(brightest) - sample.landmarks[index]).max() <= 1.0
        np.testing.assert_allclose(sample.to_image(sample.landmarks), TRIANGLE_POINTS, atol=1e-9)
    assert 5 < flips < 35, "both flipped and plain samples must be exercised"


def test_single_pixel_landmark_lands_exactly_on_its_pixel():
    # Zoom 1 and a whole-pixel offset: the warp copies pixels, so the landmark must hit its pixel.
    image = np.zeros((80, 90, 3), np.uint8)
    points = np.array([[30.0, 20.0], [61.0, 44.0], [47.0, 70.0]])
    for channel, (x, y) in enumerate(points.astype(int)):
        image[y, x, channel] = 255
    box = CropBox(50.0, 40.0, float(SIZE))
    for flip in (False, True):
        sample = apply_augmentation(image, points, TRIANGLE, box, AugmentationParams(flip=flip), SIZE)
        order = TRIANGLE.flip_permutation if flip else (0, 1, 2)
        for index in range(3):
            x, y = sample.landmarks[index]
            assert x == int(x) and y == int(y)
            assert sample.image[int(y), int(x), order[index]] == 255
            assert sample.image[:, :, order[index]].sum() == 255
    np.testing.assert_array_equal(sample.landmarks[0], [SIZE - 1 - (61 - 50 + SIZE / 2), 44 - 40 + SIZE / 2])


def test_flip_without_permutation_would_be_caught():
    # Sanity check of the test above: the unpermuted mirrored points are NOT on their blobs.
    image = blob_image(TRIANGLE_POINTS)
    sample = apply_augmentation(image, TRIANGLE_POINTS, TRIANGLE, triangle_box(), AugmentationParams(flip=True), SIZE)
    np.testing.assert_array_equal(sample.point_order, [1, 0, 2])
    unpermuted = transform_points(TRIANGLE_POINTS, sample.matrix)
    assert np.linalg.norm(channel_centroid(sample.image, 1) - unpermuted[0]) > 10
    assert np.linalg.norm(channel_centroid(sample.image, 1) - sample.landmarks[0]) < 0.1


def test_same_seed_same_sample_and_global_rng_untouched():
    image = np.random.default_rng(5).integers(0, 256, (120, 140, 3), dtype=np.uint8)
    box = triangle_box()
    config = dataclasses.replace(
        slpt_augmentation(), gaussian_blur_probability=0.3, gaussian_blur_sigma=Uniform(0.5, 1.5), motion_blur_probability=0.3
    )
    global_state = np.random.get_state()[1].copy()
    first = prepare_sample(image, TRIANGLE_POINTS, TRIANGLE, box, SIZE, config, np.random.default_rng(123))
    second = prepare_sample(image, TRIANGLE_POINTS, TRIANGLE, box, SIZE, config, np.random.default_rng(123))
    other = prepare_sample(image, TRIANGLE_POINTS, TRIANGLE, box, SIZE, config, np.random.default_rng(124))
    np.testing.assert_array_equal(np.random.get_state()[1], global_state)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.landmarks, second.landmarks)
    assert first.params == second.params
    assert other.params != first.params


def test_grayscale_and_occlusion():
    image = np.random.default_rng(6).integers(0, 256, (120, 140, 3), dtype=np.uint8)
    box = triangle_box()
    params = AugmentationParams(grayscale=True, occlusion=(10, 20, 40, 30), occlusion_colour=(200, 7, 90))
    sample = apply_augmentation(image, TRIANGLE_POINTS, TRIANGLE, box, params, SIZE)
    plain = apply_augmentation(image, TRIANGLE_POINTS, TRIANGLE, box, None, SIZE)
    np.testing.assert_array_equal(sample.image[20:30, 10:40], np.broadcast_to([200, 7, 90], (10, 30, 3)))
    outside = np.ones((SIZE, SIZE), bool)
    outside[20:30, 10:40] = False
    gray = sample.image[outside]
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    np.testing.assert_array_equal(gray[:, 0], cv2.cvtColor(plain.image, cv2.COLOR_RGB2GRAY)[outside])
    np.testing.assert_array_equal(sample.landmarks, plain.landmarks)  # appearance never moves points


def test_occlusion_rectangles_follow_each_preset():
    rng = np.random.default_rng(7)
    slpt, sdfl = slpt_augmentation(), sdfl_augmentation()
    slpt_sides, sdfl_areas, clipped = [], [], 0
    for _ in range(400):
        params = sample_augmentation(dataclasses.replace(slpt, occlusion_probability=1.0), 256, rng)
        if params.occlusion is not None:
            x0, y0, x1, y1 = params.occlusion
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256  # placed inside
            slpt_sides += [x1 - x0, y1 - y0]
        params = sample_augmentation(dataclasses.replace(sdfl, occlusion_probability=1.0), 256, rng)
        x0, y0, x1, y1 = params.occlusion
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
        area = (x1 - x0) * (y1 - y0)
        if x0 > 0 and y0 > 0 and x1 < 256 and y1 < 256:
            sdfl_areas.append(area)  # not cut by the border: area 0.2 S^2 up to whole pixels
        else:
            clipped += 1
    # int(256 * N(0.2, 0.08)): mean about 51 px, sd about 20 px.
    assert abs(np.mean(slpt_sides) - 51) < 3 and abs(np.std(slpt_sides) - 20.5) < 3
    assert np.all(np.abs(np.array(sdfl_areas) / (0.2 * 256 * 256) - 1) < 0.03)
    assert clipped > 50  # the SDFL rectangle's centre is uniform over the crop


def test_preset_values():
    slpt = slpt_augmentation()
    assert slpt.rotation == ClippedNormal(0.0, 15.0, -30.0, 30.0)
    # N(1.2, 0.05) clipped to [1.15, 1.25] of max(w, h), relative to the 1.2 crop.
    assert 1.2 * slpt.scale.mean == pytest.approx(1.2) and 1.2 * slpt.scale.std == pytest.approx(0.05)
    assert (1.2 * slpt.scale.low, 1.2 * slpt.scale.high) == pytest.approx((1.15, 1.25))
    assert slpt.shift == ClippedNormal(0.0, 0.05, -0.05, 0.05)
    assert (slpt.flip_probability, slpt.grayscale_probability, slpt.occlusion_probability) == (0.5, 0.2, 0.5)
    assert slpt.occlusion_side == ClippedNormal(0.2, 0.08, 0.0, 1.0) and slpt.occlusion_placement == "inside"
    sdfl = sdfl_augmentation()
    assert (sdfl.rotation, sdfl.scale, sdfl.shift) == (Uniform(-40, 40), Uniform(0.9314, 1.0686), Uniform(-0.1, 0.1))
    assert (sdfl.flip_probability, sdfl.grayscale_probability, sdfl.occlusion_probability) == (0.5, 0.0, 0.5)
    assert (sdfl.occlusion_area, sdfl.occlusion_aspect) == (0.2, Uniform(0.4, 2.5))
    assert sdfl.gaussian_blur_probability == sdfl.motion_blur_probability == 0.0
    assert AUGMENTATION_PRESETS["none"]() is None and AUGMENTATION_PRESETS["slpt"]() == slpt
    assert slpt_crop_convention() == CropConvention("landmarks", 1.2, 256)
    assert hrnet_crop_convention().enlarge == 1.25


def test_drawn_geometry_respects_the_preset_bounds():
    rng = np.random.default_rng(8)
    draws = [sample_augmentation(slpt_augmentation(), 256, rng) for _ in range(2000)]
    rotations = np.array([d.rotation for d in draws])
    assert np.abs(rotations).max() <= 30 and abs(rotations.std() - 14.3) < 1.0  # clipped at 2 sd
    scales = 1.2 * np.array([d.scale for d in draws])
    assert scales.min() >= 1.15 - 1e-12 and scales.max() <= 1.25 + 1e-12
    assert np.abs(np.array([d.shift for d in draws])).max() <= 0.05
    assert 0.45 < np.mean([d.flip for d in draws]) < 0.55 and 0.17 < np.mean([d.grayscale for d in draws]) < 0.23


def test_augmentation_config_round_trips_and_validates():
    for config in (AugmentationConfig(), slpt_augmentation(), sdfl_augmentation()):
        assert AugmentationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"train.yaml: unknown key\(s\) \['rotate'\]"):
        AugmentationConfig.from_dict({"rotate": 10}, source="train.yaml")
    with pytest.raises(ValueError, match="rotation.*'normal' or 'uniform'"):
        AugmentationConfig.from_dict({"rotation": {"distribution": "gauss"}})
    with pytest.raises(ValueError, match="flip_probability"):
        AugmentationConfig(flip_probability=1.5)
    with pytest.raises(ValueError, match="exactly one of occlusion_side or occlusion_area"):
        AugmentationConfig(occlusion_probability=0.5)
    with pytest.raises(ValueError, match="low <= high"):
        Uniform(2, 1)
    with pytest.raises(ValueError, match="odd"):
        AugmentationConfig(motion_blur_length=4)


# ------------------------------------------------------------------------------------------------
# Model input, units and bad input
# ------------------------------------------------------------------------------------------------
def test_image_to_tensor_and_normalised_units():
    image = np.zeros((4, 4, 3), np.uint8)
    image[0, 1] = (255, 0, 128)
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 4, 4) and tensor.dtype == torch.float32
    expected = (np.array([255, 0, 128]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(tensor[:, 0, 1].numpy(), expected, rtol=1e-6)
    points = np.array([[0.0, 128.0], [256.0, 64.0]])
    np.testing.assert_allclose(normalise_landmarks(points, 256), [[0, 0.5], [1, 0.25]])
    np.testing.assert_allclose(denormalise_landmarks(normalise_landmarks(points, 256), 256), points)


def _float_path(image: np.ndarray, normalisation: str) -> np.ndarray:
    """The model input as it was computed on the CPU before crops stayed uint8 until the device:
    float32 ImageNet RGB, or the float64 per-channel z-score of the BGR crop."""
    if normalisation == "imagenet_rgb":
        mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
        normalised = (image.astype(np.float32) / 255.0 - mean) / std
    else:
        pixels = image[:, :, ::-1].astype(np.float64)
        std = pixels.std(axis=(0, 1))
        normalised = ((pixels - pixels.mean(axis=(0, 1))) / np.where(std < 1e-6, 1.0, std)).astype(np.float32)
    return normalised.transpose(2, 0, 1)


@pytest.mark.parametrize("normalisation", ["imagenet_rgb", "per_image_zscore_bgr"])
def test_uint8_crops_normalised_as_a_batch_equal_the_float_path(normalisation):
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    crops[1] = crops[1] // 40 * 37 + 5  # few distinct values
    crops[2, :, :, 1] = 200  # a constant channel: divided by 1
    crops[3, 10:30, 5:25] = 0  # an occluding rectangle
    expected = np.stack([_float_path(crop, normalisation) for crop in crops])
    batch = torch.stack([crop_to_tensor(crop) for crop in crops])
    assert batch.dtype == torch.uint8 and batch.shape == (6, 3, 40, 40)
    normalised = normalise_crops(batch, normalisation)
    assert normalised.dtype == torch.float32
    # At most one float32 rounding step apart (ImageNet: the same operations, so equal; z-score:
    # exact statistics against numpy's float64 sums); in practice equal for both.
    difference = np.abs(normalised.numpy() - expected)
    assert np.all(difference <= np.spacing(np.abs(expected).astype(np.float32)))
    if normalisation == "imagenet_rgb":
        assert np.array_equal(normalised.numpy(), expected)
    assert np.all(normalised.numpy()[2, 1] == 0.0) == (normalisation == "per_image_zscore_bgr")
    # Channels-last crops (what a channels-last model gets) give the same numbers, channels-last.
    channels_last = normalise_crops(batch.contiguous(memory_format=torch.channels_last), normalisation)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(channels_last, normalised)
    # One crop on its own (image_to_tensor) is the same computation.
    assert torch.equal(image_to_tensor(crops[4], normalisation), normalised[4])


def test_normalise_crops_refuses_float_input():
    with pytest.raises(ValueError, match=r"normalise_crops: crops must be a \(B, 3, S, S\) uint8 RGB tensor, got torch.float32"):
        normalise_crops(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="normalisation must be one of"):
        normalise_crops(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "zscore")


def test_bad_input_is_a_clear_error():
    image = np.zeros((50, 50, 3), np.uint8)
    box = CropBox(25, 25, 30)
    with pytest.raises(ValueError, match=r"landmarks \[2\] are NaN"):
        prepare_sample(image, np.array([[1, 2], [3, 4], [np.nan, 5]]), TRIANGLE, box, SIZE)
    with pytest.raises(ValueError, match="has 3 points, landmarks have 2"):
        prepare_sample(image, np.zeros((2, 2)), TRIANGLE, box, SIZE)
    with pytest.raises(ValueError, match=r"uint8 RGB array, got float64"):
        prepare_sample(image.astype(np.float64), TRIANGLE_POINTS, TRIANGLE, box, SIZE)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        prepare_sample(image[:, :, 0], TRIANGLE_POINTS, TRIANGLE, box, SIZE)
    with pytest.raises(ValueError, match="default_rng"):
        prepare_sample(image, TRIANGLE_POINTS, TRIANGLE, box, SIZE, slpt_augmentation())
    with pytest.raises(TypeError, match="numpy Generator"):
        prepare_sample(image, TRIANGLE_POINTS, TRIANGLE, box, SIZE, slpt_augmentation(), rng=7)
    with pytest.raises(ValueError, match="needs the layout"):
        apply_augmentation(image, TRIANGLE_POINTS, None, box, AugmentationParams(flip=True), SIZE)
    with pytest.raises(ValueError, match="side positive"):
        CropBox(0, 0, 0)
