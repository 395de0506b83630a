import numpy as np
import pytest

from facemark.layouts import COFW29, W300_68, WFLW98, Layout, available_layouts, get_layout, wflw98_to_300w68


@pytest.mark.parametrize("layout", [WFLW98, W300_68, COFW29])
def test_builtin_layouts_are_consistent(layout):
    assert len(layout.flip_permutation) == layout.num_points
    assert len(layout.point_names) == layout.num_points
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (4, layout.num_points, 2))
    # Flip twice is the identity.
    np.testing.assert_allclose(layout.flip_landmarks(layout.flip_landmarks(points, 100), 100), points)
    # Every edge joins two valid points.
    assert all(0 <= a < layout.num_points and 0 <= b < layout.num_points for a, b in layout.edges)


def test_flip_swaps_left_and_right_points():
    # A face whose left-eye outer corner is at x=10 in a 100-px image: after the flip the point that
    # takes index 60 (left eye outer corner) is the mirrored right-eye outer corner (72).
    points = np.zeros((98, 2))
    points[60] = (10, 5)
    points[72] = (80, 7)
    flipped = WFLW98.flip_landmarks(points, width=100)
    np.testing.assert_allclose(flipped[60], (99 - 80, 7))
    np.testing.assert_allclose(flipped[72], (99 - 10, 5))
    assert WFLW98.flip_permutation[96] == 97 and W300_68.flip_permutation[36] == 45
    assert COFW29.flip_permutation[8] == 9 and COFW29.flip_permutation[20] == 20


def test_flip_permutations_match_the_facts():
    assert WFLW98.flip_permutation[:34] == tuple(range(32, -1, -1)) + (46,)
    assert WFLW98.flip_permutation[76:88] == (82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84, 83)
    assert W300_68.flip_permutation[36:48] == (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40)


def test_normalisation_distances():
    points = np.zeros((68, 2))
    points[36:42] = [(0, 0), (1, -1), (2, -1), (3, 0), (2, 1), (1, 1)]  # centroid (1.5, 0)
    points[42:48] = points[36:42] + (10, 0)
    assert W300_68.inter_ocular_distance(points) == pytest.approx(13.0)  # 36 (0,0) to 45 (13,0)
    assert W300_68.inter_pupil_distance(points) == pytest.approx(10.0)
    wflw = np.zeros((2, 98, 2))
    wflw[:, 96] = (3, 4)
    assert np.allclose(WFLW98.inter_pupil_distance(wflw), 5.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 98, 2\)"):
        WFLW98.inter_ocular_distance(np.zeros((68, 2)))


def test_wflw98_to_300w68_follows_the_published_conversion():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 256, (98, 2))
    q = wflw98_to_300w68(p)
    assert q.shape == (68, 2)
    np.testing.assert_allclose(q[:17], p[0:33:2])
    np.testing.assert_allclose(q[17], p[33])
    np.testing.assert_allclose(q[18], (p[34, 0], (p[34, 1] + p[41, 1]) / 2))
    np.testing.assert_allclose(q[25], (p[45, 0], (p[45, 1] + p[47, 1]) / 2))
    np.testing.assert_allclose(q[26], p[46])
    np.testing.assert_allclose(q[27:36], p[51:60])
    np.testing.assert_allclose(q[[36, 39, 42, 45]], p[[60, 64, 68, 72]])
    np.testing.assert_allclose(q[37], 0.666 * p[61] + 0.333 * p[62])
    np.testing.assert_allclose(q[47], 0.666 * p[75] + 0.333 * p[74])
    np.testing.assert_allclose(q[48:], p[76:96])
    # Batched conversion equals the per-shape one.
    batch = np.stack([p, p + 1])
    np.testing.assert_allclose(wflw98_to_300w68(batch)[1], wflw98_to_300w68(p + 1))


def test_custom_layout_from_yaml(tmp_path):
    path = tmp_path / "five.yaml"
    path.write_text(
        "name: five\nnum_points: 5\n"
        "groups: {eyes: [0, 1], nose: [2], mouth: [3, 4]}\n"
        "flip_permutation: [1, 0, 2, 4, 3]\n"
        "inter_ocular: [0, 1]\ninter_pupil: [0, 1]\n"
    )
    layout = get_layout(path)
    assert layout.num_points == 5 and layout.inter_pupil == ((0,), (1,))
    assert layout.edges == ((0, 1), (3, 4))
    assert Layout.from_dict(layout.to_dict()) == layout


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nnum_points: 3\nflip_permutation: [0, 1]\ninter_ocular: [0, 1]\ninter_pupil: [0, 1]\n", "permutation"),
        ("name: x\nnum_points: 3\nflip_permutation: [0, 1, 2]\ninter_ocular: [0, 7]\ninter_pupil: [0, 1]\n", "inter_ocular"),
        ("name: x\nflip_permutation: [0, 1, 2]\ninter_ocular: [0, 1]\n", "missing key"),
        ("name: x\nnum_points: 3\nflip_permutation: [0, 1, 2]\n", "no inter_ocular points"),
        ("name: x\nnum_points: 3\nnormalisation: inter_pupil\ninter_ocular: [0, 1]\n", "no inter_pupil points"),
        ("name: x\nnum_points: 3\nnormalisation: eyes\ninter_ocular: [0, 1]\n", "normalisation 'eyes'"),
        ("name: x\nnum_points: 3\nflip_permutation: [0, 1, 5]\ninter_ocular: [0, 1]\n", r"indices \[5\] outside"),
        ("name: x\nnum_points: 3\nflip_permutation: [0, 1, 2]\ninter_ocular: [0, 1]\ninter_pupil: [0, 1]\nbogus: 1\n", "bogus"),
        ("name: x\nnum_points: 3\nflip_permutation: [1, 2, 0]\ninter_ocular: [0, 1]\ninter_pupil: [0, 1]\n", "own inverse"),
    ],
)
def test_bad_layout_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        get_layout(path)
    assert "bad.yaml" in str(error.value)


def test_unknown_layout_name():
    with pytest.raises(KeyError, match="wflw98"):
        get_layout("wflw99")
    assert "cofw29" in available_layouts()


def test_pupils_are_drawn_as_points_not_joined():
    assert (96, 97) not in WFLW98.edges and (16, 17) not in COFW29.edges
    assert (60, 61) in WFLW98.edges and (67, 60) in WFLW98.edges  # the eye is a closed loop
